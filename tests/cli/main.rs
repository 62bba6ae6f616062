// harness comes next

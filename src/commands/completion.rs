//! `p2pfile completion SHELL`.

use clap::CommandFactory;

use crate::cli::{Cli, CompletionArgs};

pub fn run(args: &CompletionArgs) {
    clap_complete::generate(
        args.shell,
        &mut Cli::command(),
        "p2pfile",
        &mut std::io::stdout(),
    );
}

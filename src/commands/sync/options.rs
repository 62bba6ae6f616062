//! The settings of one sync run, resolved once from flags, environment and
//! the config file.

use super::*;

/// Settings of one sync run, resolved from flags, environment and file.
pub(super) struct Options {
    pub(super) once: bool,
    pub(super) expect: usize,
    pub(super) timeout: Duration,
    pub(super) mode: Mode,
    pub(super) trash_keep: Duration,
    pub(super) rescan: Duration,
    pub(super) discovery_port: u16,
}

impl Options {
    pub(super) fn resolve(args: &SyncArgs, file: &FileValues) -> Result<Options, Failure> {
        let once = file.flag(args.once, "once")?;
        let expect = parse_number(file.pick(&args.expect, "expect"), "--expect", 1.0)?;
        if expect < 1.0 || expect.fract() != 0.0 {
            return Err(Failure::usage(
                anyhow!("--expect {expect} is not a positive whole number of peers"),
                "use a number such as 2",
            ));
        }
        let timeout = parse_number(file.pick(&args.timeout, "timeout"), "--timeout", 60.0)?;
        if timeout <= 0.0 {
            return Err(Failure::usage(
                anyhow!("--timeout {timeout} would give up at once"),
                "use a number of seconds such as 60",
            ));
        }
        let send_only = file.flag(args.send_only, "send-only")?;
        let receive_only = file.flag(args.receive_only, "receive-only")?;
        let mode = match (send_only, receive_only) {
            (true, true) => {
                return Err(Failure::usage(
                    anyhow!("--send-only and --receive-only exclude each other"),
                    "pick one, or neither for two-way sync",
                ));
            }
            (true, false) => Mode::SendOnly,
            (false, true) => Mode::ReceiveOnly,
            (false, false) => Mode::SendReceive,
        };
        let trash_days = parse_number(
            file.pick(&args.trash_days, "trash-days"),
            "--trash-days",
            7.0,
        )?;
        let rescan = parse_number(file.pick(&args.rescan, "rescan"), "--rescan", 60.0)?;
        if rescan <= 0.0 {
            return Err(Failure::usage(
                anyhow!("--rescan {rescan} is not a positive number of seconds"),
                "use a number such as 60",
            ));
        }
        let discovery_port = match file.pick(&args.discovery_port, "discovery-port") {
            None => DISCOVERY_PORT,
            Some(p) if p.trim() == "0" => 0,
            Some(p) => crate::config::parse_port(&p, "--discovery-port")?,
        };
        Ok(Options {
            once,
            expect: expect as usize,
            timeout: Duration::from_secs_f64(timeout),
            mode,
            trash_keep: Duration::from_secs_f64(trash_days.max(0.0) * 86_400.0),
            rescan: Duration::from_secs_f64(rescan),
            discovery_port,
        })
    }
}

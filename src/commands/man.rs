//! `p2pfile man`: the roff manual page of the whole CLI, one page with a
//! section per subcommand (as `rg --generate man` does), so a package can
//! install `p2pfile.1` without a build script.

use std::io::Write;

use clap::CommandFactory;
use clap_mangen::Man;
use clap_mangen::roff::{Roff, roman};

use crate::cli::{Cli, EXIT_CODES};
use crate::error::Failure;

pub fn run() -> Result<(), Failure> {
    let page = render();
    let mut out = std::io::stdout().lock();
    match out.write_all(page.as_bytes()).and_then(|()| out.flush()) {
        // A closed pipe (`| head`) is not an error worth reporting.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// The page: the top command's name, synopsis, description and options;
/// then COMMANDS with one subsection per subcommand (its synopsis,
/// description and own options, not the global ones again); then the exit
/// codes and the version.
fn render() -> String {
    let mut cmd = Cli::command();
    // Builds the subcommands too: they get their bin names ("p2pfile
    // serve") for their synopses, and the global flags propagated to them.
    cmd.build();
    let top = Man::new(cmd.clone());
    let mut page = Page::new();
    page.man(|w| top.render_title(w));
    page.man(|w| top.render_name_section(w));
    page.man(|w| top.render_synopsis_section(w));
    page.man(|w| top.render_description_section(w));
    page.man(|w| top.render_options_section(w));

    let globals: Vec<&str> = cmd
        .get_arguments()
        .filter(|a| a.is_global_set())
        .map(|a| a.get_id().as_str())
        .collect();
    page.roff(Roff::default().control("SH", ["COMMANDS"]));
    // clap's own `help` subcommand is --help by another name.
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let name = sub
            .get_bin_name()
            .map_or_else(|| format!("p2pfile {}", sub.get_name()), str::to_owned);
        let own = sub.clone().mut_args(|a| {
            let shown_above = globals.contains(&a.get_id().as_str()) || a.get_id() == "help";
            a.hide(shown_above)
        });
        let man = Man::new(own.clone());
        page.roff(Roff::default().control("SS", [name.as_str()]));
        // Each part starts with its own section header; inside COMMANDS
        // it is a paragraph of the subsection.
        page.subsection(|w| man.render_synopsis_section(w));
        page.subsection(|w| man.render_description_section(w));
        if own.get_arguments().any(|a| !a.is_hide_set()) {
            page.subsection(|w| man.render_options_section(w));
        }
        if let Some(after) = sub.get_after_long_help().or_else(|| sub.get_after_help()) {
            page.roff(&preformatted(&after.to_string()));
        }
    }

    page.roff(Roff::default().control("SH", ["EXIT STATUS"]));
    let codes = EXIT_CODES
        .split_once('\n')
        .map_or(EXIT_CODES, |(_, table)| table);
    page.roff(&preformatted(codes));
    page.man(|w| top.render_version_section(w));
    page.text
}

/// The page being assembled. Every clap_mangen and roff render starts with
/// the same apostrophe preamble; the page has it once, at the top. Other
/// characters than ASCII (`…`, `÷` in the help) become roff escapes, so
/// the page reads the same whatever encoding `man` assumes.
struct Page {
    text: String,
    preamble: String,
}

impl Page {
    fn new() -> Self {
        let preamble = Roff::default().render();
        Self {
            text: preamble.clone(),
            preamble,
        }
    }

    fn man(&mut self, part: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) {
        self.push(part, false);
    }

    /// A part whose section header becomes a paragraph break.
    fn subsection(&mut self, part: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) {
        self.push(part, true);
    }

    fn roff(&mut self, roff: &Roff) {
        self.push(|w| roff.to_writer(w), false);
    }

    fn push(&mut self, part: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>, demote: bool) {
        let mut buf = Vec::new();
        part(&mut buf).expect("writing to a Vec cannot fail");
        let text = String::from_utf8(buf).expect("clap help text is UTF-8");
        let text = text.strip_prefix(&self.preamble).unwrap_or(&text);
        for line in text.lines() {
            let line = if demote && line.starts_with(".SH ") {
                ".PP"
            } else {
                line
            };
            for c in line.chars() {
                if c.is_ascii() {
                    self.text.push(c);
                } else {
                    self.text.push_str(&format!("\\[u{:04X}]", c as u32));
                }
            }
            self.text.push('\n');
        }
    }
}

/// Text kept line for line (a table of exit codes), escaped for roff.
fn preformatted(text: &str) -> Roff {
    let mut r = Roff::default();
    r.control("PP", []).control("nf", []);
    for line in text.lines() {
        r.text([roman(line)]);
    }
    r.control("fi", []);
    r
}

//! Command-line front end: argument parsing helpers, one module per
//! subcommand, and the flag groups several subcommands share.

pub mod attach;
pub mod bench;
pub mod health;
pub mod max_sessions;
pub mod orchestrator;
pub mod redeemer;
pub mod serve;
pub mod transcode;
pub mod video_backend;

/// Rewrites go-livepeer's single-dash long flags (`-maxSessions 4`,
/// `-orchAddr=x`) into clap's `--maxSessions` form, so operators can keep their
/// habits. Single-letter flags and negative numbers are left alone, and
/// nothing after a bare `--` is touched.
pub fn normalize_go_flags<I: IntoIterator<Item = String>>(args: I) -> Vec<String> {
    let mut out = Vec::new();
    let mut passthrough = false;
    for arg in args {
        if passthrough {
            out.push(arg);
            continue;
        }
        if arg == "--" {
            passthrough = true;
            out.push(arg);
            continue;
        }
        let go_style = arg.len() > 2
            && arg.starts_with('-')
            && !arg.starts_with("--")
            && arg[1..].chars().take_while(|c| *c != '=').count() >= 2
            && arg[1..]
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic());
        out.push(if go_style { format!("-{arg}") } else { arg });
    }
    out
}

/// Sets up `tracing` on stderr, as text or JSON lines.
pub fn init_logging(json: bool, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("LPWORKER_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default_level));
    // Colours only for a person at a terminal: a log file or collector
    // would get escape codes inside every field.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_go_flags;

    fn norm(args: &[&str]) -> Vec<String> {
        normalize_go_flags(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn go_flags_become_long_flags() {
        assert_eq!(
            norm(&[
                "lpworker",
                "serve",
                "-maxSessions",
                "4",
                "-orchAddr=h:1",
                "-v",
                "--out",
                "-",
                "-1"
            ]),
            [
                "lpworker",
                "serve",
                "--maxSessions",
                "4",
                "--orchAddr=h:1",
                "-v",
                "--out",
                "-",
                "-1"
            ]
        );
        assert_eq!(norm(&["x", "--", "-notAFlag"]), ["x", "--", "-notAFlag"]);
    }
}

//! The binary's command line: what clap reads (`args`) and the subcommands that run and
//! exit (`commands`). `main.rs` keeps the run itself: logging, the config, the runtime, the
//! gateway until a signal.

pub mod args;
pub mod commands;

use std::process::ExitCode;
use std::time::Duration;

use clap::CommandFactory;
use wsgate::config::LogConfig;

pub use args::{Cli, Command, LogFormatArg, RunArgs};
use commands::{check, config_from_flags, print, reload_command, replay, Print};

/// Run the subcommand `cli` names, if any, to its exit code; `None`: no subcommand, run the
/// gateway. `init_logging` sets up logging for the subcommands that log.
pub fn subcommand(cli: &Cli, init_logging: fn(&Cli, &LogConfig)) -> Option<ExitCode> {
    let code = match cli.command.as_ref()? {
        Command::Reload {
            admin,
            config,
            timeout_secs,
        } => {
            let wait = Duration::from_secs(*timeout_secs);
            reload_command(*admin, config.as_deref(), wait)
        }
        Command::Check { file, fetch_keys } => {
            init_logging(cli, &LogConfig::default());
            check(file, *fetch_keys)
        }
        Command::Config { args, .. } => config_from_flags(args),
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "wsgate",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Replay {
            file,
            cat,
            websockify_export,
            tcp,
            ws,
            speed,
            max_wait_secs,
            once,
        } => {
            let pace = wsgate::record::replay::Pace {
                speed: *speed,
                max_wait: Duration::try_from_secs_f64(*max_wait_secs).unwrap_or(Duration::ZERO),
            };
            let printed = match (*cat, *websockify_export) {
                (true, _) => Print::Cat,
                (false, true) => Print::WebsockifyExport,
                (false, false) => Print::Listing,
            };
            replay(file, printed, *tcp, *ws, pace, *once)
        }
        Command::Man => {
            let mut out = Vec::new();
            match clap_mangen::Man::new(Cli::command()).render(&mut out) {
                Ok(()) => print(&out),
                Err(e) => {
                    eprintln!("error: rendering the manual page: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    };
    Some(code)
}

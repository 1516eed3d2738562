//! `tributary audit verify EXPORT --public-key KEY`: checks a log's export offline, with no
//! server and no database: every checkpoint's signature with the keys given, every entry against
//! the chain and the checkpointed trees; prints what is wrong, naming the entry.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use tributary_audit::export::verify;
use tributary_audit::note::NoteVerifier;

/// `tributary audit …`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Verifies an export of a log offline; exits 1 when anything is wrong, naming the entry.
    Verify {
        /// The export file (`tributary-audit-export/1`, JSON lines).
        export: PathBuf,
        /// A public key the checkpoints may be signed with (`<name>+<id>+<base64>`): the log's,
        /// or your own cosigning key. Repeatable.
        #[arg(long = "public-key", required = true)]
        public_keys: Vec<String>,
    },
}

/// Runs an audit command.
pub fn audit(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let AuditCommand::Verify { export, public_keys } = args.command;
    let keys = public_keys
        .iter()
        .map(|key| NoteVerifier::parse(key).map_err(|err| anyhow::anyhow!("--public-key {key}: {err}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let text =
        std::fs::read_to_string(&export).map_err(|err| anyhow::anyhow!("{}: {err}", export.display()))?;
    let report = verify(&text, &keys);
    println!(
        "{}: {} entries, {} checkpoints verified",
        if report.origin.is_empty() { "?" } else { &report.origin },
        report.entries,
        report.checkpoints_verified
    );
    if report.checkpoints_verified == 0 && report.problems.is_empty() {
        println!("no checkpoint signed by these keys: nothing holds the entries to what the log signed");
        return Ok(ExitCode::from(1));
    }
    for problem in &report.problems {
        println!("{problem}");
    }
    Ok(if report.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

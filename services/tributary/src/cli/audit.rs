//! `tributary audit verify EXPORT --public-key KEY`: checks a log's export offline, with no
//! server and no database: every checkpoint's signature with the keys given, every entry against
//! the chain and the checkpointed trees; prints what is wrong, naming the entry. With
//! `--cosigner KEY` (repeatable: both parties of an exchange), also how far each key a tenant
//! holds itself cosigned the log. `cosign` and `keygen`
//! are in [`super::audit_cosign`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use tributary_audit::checkpoint::Checkpoint;
use tributary_audit::export::verify;
use tributary_audit::note::{NoteVerifier, open};

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
        /// A public key of the log the checkpoints are signed with (`<name>+<id>+<base64>`; the
        /// log's current and retired keys). Repeatable.
        #[arg(long = "public-key", required = true)]
        public_keys: Vec<String>,
        /// A key a tenant holds itself: the export must have checkpoints it cosigned, and the
        /// entries up to the largest of them are bound to the tenant's signature too.
        /// Repeatable: an exchange's log is cosigned by both its parties.
        #[arg(long = "cosigner")]
        cosigners: Vec<String>,
    },
    /// Cosigns the log's latest checkpoint with the tenant's own key, after checking that it
    /// extends the last one cosigned (run it from a backend or a cron job).
    Cosign(super::audit_cosign::CosignArgs),
    /// Makes a cosigning key: writes the private key to FILE and prints the public key.
    Keygen {
        /// The key's name, e.g. `acme.example/audit-witness`.
        name: String,
        /// Where to write the private key (not overwritten).
        file: PathBuf,
    },
}

/// Runs an audit command.
pub async fn audit(args: AuditArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        AuditCommand::Verify { export, public_keys, cosigners } => {
            verify_export(&export, &public_keys, &cosigners)
        }
        AuditCommand::Cosign(args) => super::audit_cosign::cosign_latest(args).await,
        AuditCommand::Keygen { name, file } => super::audit_cosign::keygen(&name, &file),
    }
}

fn verify_export(
    export: &std::path::Path,
    public_keys: &[String],
    cosigners: &[String],
) -> anyhow::Result<ExitCode> {
    let parse = |key: &String| NoteVerifier::parse(key).map_err(|err| anyhow::anyhow!("{key}: {err}"));
    // The log's keys alone vouch for checkpoints: a cosigner's signature binds what the log
    // signed, it never stands in for the log's (or one party could sign entries of its own).
    let keys = public_keys.iter().map(parse).collect::<anyhow::Result<Vec<_>>>()?;
    let cosigners = cosigners.iter().map(parse).collect::<anyhow::Result<Vec<_>>>()?;
    let text =
        std::fs::read_to_string(export).map_err(|err| anyhow::anyhow!("{}: {err}", export.display()))?;
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
    let mut cosigned_ok = true;
    for cosigner in &cosigners {
        // The largest checkpoint the cosigner signed: the entries up to it verified above.
        let largest = text
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter_map(|line| line["checkpoint"].as_str().map(str::to_owned))
            .filter_map(|note| open(&note, std::slice::from_ref(cosigner)).ok())
            .filter_map(|opened| Checkpoint::parse(&opened.text).ok())
            .map(|checkpoint| checkpoint.size)
            .max();
        match largest {
            Some(size) => println!("cosigned by {}: the entries up to {size}", cosigner.name()),
            None => {
                println!("no checkpoint is cosigned by {}", cosigner.name());
                cosigned_ok = false;
            }
        }
    }
    Ok(if report.problems.is_empty() && cosigned_ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

//! `tributary audit cosign`: cosigns a tenant's latest checkpoint with a key the tenant holds,
//! from a backend or a cron job, as a transparency-log witness does: it opens the checkpoint with
//! the log keys it trusts, checks that it extends the last one it cosigned (a consistency proof,
//! checked here, not by the server), then posts its cosignature and remembers what it cosigned.
//! `tributary audit keygen` makes such a key.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::Args;
use serde_json::{Value, json};
use tributary_audit::checkpoint::Checkpoint;
use tributary_audit::merkle::{Hash, verify_consistency};
use tributary_audit::note::{NoteSigner, NoteVerifier, cosign, open};

/// Arguments of `tributary audit cosign`.
#[derive(Debug, Args)]
pub struct CosignArgs {
    /// HTTP base URL of the server, e.g. https://realtime.example.com.
    #[arg(long, env = "TRIBUTARY_URL")]
    url: String,
    /// A management token of the tenant (admin).
    #[arg(long, env = "TRIBUTARY_ADMIN_TOKEN", hide_env_values = true)]
    token: String,
    /// The tenant id.
    #[arg(long)]
    tenant: String,
    /// An exchange of the tenant (`exc_…`): cosign its log rather than the tenant's, with the
    /// key the tenant registered for its own.
    #[arg(long)]
    exchange: Option<String>,
    /// The file holding the cosigning key (`PRIVATE+KEY+…`, from `tributary audit keygen`).
    #[arg(long)]
    key: PathBuf,
    /// A public key of the log the checkpoints must be signed with (repeatable). Without it,
    /// the keys remembered in the state file, or on the first run the keys the server lists.
    #[arg(long = "log-key")]
    log_keys: Vec<String>,
    /// Where the size and root last cosigned are kept between runs.
    #[arg(long)]
    state: PathBuf,
}

/// What the cosigner remembers between runs.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct State {
    size: u64,
    root: String,
    log_keys: Vec<String>,
}

fn read_state(path: &Path) -> anyhow::Result<State> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            serde_json::from_str(&text).with_context(|| format!("{} is not a cosigner state", path.display()))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(err) => Err(err).with_context(|| path.display().to_string()),
    }
}

/// The URL of the log's `rest`: the tenant's, or the exchange's.
fn log_url(args: &CosignArgs, rest: &str) -> String {
    let base = format!("{}/v1/tenants/{}", args.url.trim_end_matches('/'), args.tenant);
    match &args.exchange {
        None => format!("{base}/audit/{rest}"),
        Some(exchange) => format!("{base}/exchanges/{exchange}/audit/{rest}"),
    }
}

async fn get(client: &reqwest::Client, args: &CosignArgs, rest: &str) -> anyhow::Result<Value> {
    let url = log_url(args, rest);
    let response = client.get(url).bearer_auth(&args.token).send().await?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("GET …/audit/{rest}: {status}: {body}");
    }
    Ok(body)
}

/// Runs `tributary audit cosign`: exit 0 when cosigned (or nothing new), 1 on an error, 2 when
/// the log is not consistent with what was cosigned before (nothing is posted).
pub async fn cosign_latest(args: CosignArgs) -> anyhow::Result<ExitCode> {
    let key_text = std::fs::read_to_string(&args.key).with_context(|| args.key.display().to_string())?;
    let signer = NoteSigner::parse(key_text.trim()).map_err(|err| anyhow::anyhow!("--key: {err}"))?;
    let mut state = read_state(&args.state)?;
    let client = reqwest::Client::new();
    let log = get(&client, &args, "log").await?;
    let trusted: Vec<String> = if !args.log_keys.is_empty() {
        args.log_keys.clone()
    } else if !state.log_keys.is_empty() {
        state.log_keys.clone()
    } else {
        let listed: Vec<String> = log["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k["public_key"].as_str().map(str::to_owned))
            .collect();
        eprintln!(
            "first run: trusting the log keys the server lists ({}); pin them with --log-key",
            listed.len()
        );
        listed
    };
    let verifiers = trusted
        .iter()
        .map(|k| NoteVerifier::parse(k).map_err(|err| anyhow::anyhow!("log key {k}: {err}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let Some(note) = log["checkpoint"].as_str() else { bail!("the log has no signed checkpoint yet") };
    let opened = open(note, &verifiers).map_err(|err| anyhow::anyhow!("the latest checkpoint: {err}"))?;
    let checkpoint = Checkpoint::parse(&opened.text)?;
    let root_of = |text: &str| -> anyhow::Result<Hash> {
        STANDARD.decode(text)?.try_into().map_err(|_| anyhow::anyhow!("a root is 32 bytes"))
    };
    if state.size > 0 {
        let old_root = root_of(&state.root)?;
        if checkpoint.size < state.size {
            println!(
                "NOT CONSISTENT: the log has {} entries, fewer than the {} cosigned",
                checkpoint.size, state.size
            );
            return Ok(ExitCode::from(2));
        }
        if checkpoint.size == state.size {
            if checkpoint.root != old_root {
                println!(
                    "NOT CONSISTENT: another tree of size {} than the one cosigned (a fork)",
                    state.size
                );
                return Ok(ExitCode::from(2));
            }
            println!("{}: nothing new since size {}", checkpoint.origin, state.size);
            return Ok(ExitCode::SUCCESS);
        }
        let proof =
            get(&client, &args, &format!("proofs/consistency?from={}&to={}", state.size, checkpoint.size))
                .await?;
        let hashes = proof["proof"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| root_of(h.as_str().unwrap_or_default()))
            .collect::<anyhow::Result<Vec<Hash>>>()?;
        if let Err(err) =
            verify_consistency(state.size, checkpoint.size, &old_root, &checkpoint.root, &hashes)
        {
            println!(
                "NOT CONSISTENT: the checkpoint of size {} does not extend the one cosigned at size {}: {err}",
                checkpoint.size, state.size
            );
            return Ok(ExitCode::from(2));
        }
    }
    let cosigned = cosign(note, &signer)?;
    let url = log_url(&args, "cosignatures");
    let response =
        client.post(url).bearer_auth(&args.token).json(&json!({"checkpoint": cosigned})).send().await?;
    let status = response.status();
    if !status.is_success() {
        bail!("POST …/audit/cosignatures: {status}: {}", response.text().await.unwrap_or_default());
    }
    state = State { size: checkpoint.size, root: STANDARD.encode(checkpoint.root), log_keys: trusted };
    std::fs::write(&args.state, serde_json::to_string_pretty(&state)?)
        .with_context(|| args.state.display().to_string())?;
    println!("{}: cosigned at size {}", checkpoint.origin, checkpoint.size);
    Ok(ExitCode::SUCCESS)
}

/// Runs `tributary audit keygen NAME FILE`: writes a new cosigning key to `file` (created, not
/// overwritten, readable by its owner only) and prints its public key, to register with
/// `PUT …/audit/cosigner`.
pub fn keygen(name: &str, file: &Path) -> anyhow::Result<ExitCode> {
    let seed: [u8; 32] = rand::random();
    let signer = NoteSigner::from_seed(name, &seed).map_err(|err| anyhow::anyhow!("{name}: {err}"))?;
    let mut material = vec![1u8];
    material.extend_from_slice(&seed);
    let id = signer.verifier_key().split('+').nth(1).unwrap_or_default().to_owned();
    let private = format!("PRIVATE+KEY+{name}+{id}+{}\n", STANDARD.encode(material));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut out = options.open(file).with_context(|| format!("{} (not overwritten)", file.display()))?;
    std::io::Write::write_all(&mut out, private.as_bytes())?;
    println!("{}", signer.verifier_key());
    Ok(ExitCode::SUCCESS)
}

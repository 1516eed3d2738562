//! The WebSocket layer against the Autobahn conformance cases, run by `kosoku` (PyPI; installed
//! by `scripts/test`) through the diagnostic echo endpoint.

use tributary_testkit::TestServer;

/// Compression (permessage-deflate, cases 12 and 13) is not offered, so those cases do not
/// apply; every other case (301 of them, including the 16 MiB messages of 9.*) must pass.
const EXCLUDED: &[&str] = &["12.*", "13.*"];

/// The cases that run with those excluded.
const CASES: usize = 301;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_layer_passes_the_autobahn_cases() {
    let server = TestServer::spawn_with(|relay| relay.diagnostic_echo = true).await;
    let reports = tempfile::tempdir().unwrap();
    let url = server.ws_url().replace("/v1/connect", "/v1/diagnostics/echo");
    let mut args = vec!["-c".to_owned(), "from kosoku._cli import main; main()".to_owned(), url];
    for case in EXCLUDED {
        args.extend(["-x".to_owned(), (*case).to_owned()]);
    }
    args.extend(["-p".into(), "4".into(), "-o".into(), reports.path().display().to_string()]);
    let output = tokio::process::Command::new("python3")
        .args(&args)
        .output()
        .await
        .expect("python3 runs (scripts/test installs kosoku with pip)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "Autobahn cases failed (is kosoku installed? `pip install kosoku`):\n{stdout}\n{stderr}"
    );
    // The runner's own summary is not enough: count the cases and read every verdict.
    let index = std::fs::read_to_string(reports.path().join("index.json")).expect("kosoku wrote index.json");
    let index: serde_json::Value = serde_json::from_str(&index).unwrap();
    let cases: Vec<(&String, &serde_json::Value)> =
        index.as_object().unwrap().values().flat_map(|agent| agent.as_object().unwrap().iter()).collect();
    assert_eq!(cases.len(), CASES, "every case ran:\n{stdout}");
    let failed: Vec<String> = cases
        .iter()
        .filter(|(_, verdict)| {
            !matches!(verdict["behavior"].as_str(), Some("OK" | "NON-STRICT" | "INFORMATIONAL"))
                || !matches!(verdict["behaviorClose"].as_str(), Some("OK" | "INFORMATIONAL"))
        })
        .map(|(case, verdict)| {
            format!("{case}: {} / close {}", verdict["behavior"], verdict["behaviorClose"])
        })
        .collect();
    assert!(failed.is_empty(), "{} of {CASES} cases failed: {failed:#?}", failed.len());
    let lenient = cases.iter().filter(|(_, verdict)| verdict["behavior"] == "NON-STRICT").count();
    println!("autobahn: {CASES} cases, 0 failed, {lenient} non-strict");
}

//! The documentation is part of the product: these tests keep it in step with the code.

use tributary_protocol::{CloseCode, ErrorCode};

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn every_error_and_close_code_is_documented() {
    let doc = read("docs/protocol.md");
    for code in ErrorCode::ALL {
        let row = format!("| {} | {} |", code.number(), code.name());
        assert!(doc.contains(&row), "docs/protocol.md lacks the row {row}");
    }
    for code in CloseCode::ALL {
        assert!(
            doc.contains(&format!("| {} |", code.number())),
            "docs/protocol.md lacks close code {code:?}"
        );
    }
}

#[test]
fn every_configuration_key_is_documented() {
    let doc = read("docs/configuration.md");
    for line in tributary::config::DEFAULT_CONFIG_TOML.lines() {
        let line = line.trim_start_matches("# ");
        if let Some((key, _)) = line.split_once(" = ")
            && !key.contains(' ')
        {
            assert!(doc.contains(&format!("`{key}`")), "docs/configuration.md lacks `{key}`");
        }
    }
}

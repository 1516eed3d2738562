//! The documentation is part of the product: these tests keep it in step with the code.

use std::collections::BTreeSet;

use tributary_protocol::{CloseCode, ErrorCode};

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
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

/// The rows of the first markdown table after `heading`, each split into trimmed cells.
fn table_after(doc: &str, heading: &str) -> Vec<Vec<String>> {
    let start = doc.find(heading).unwrap_or_else(|| panic!("no heading {heading}"));
    doc[start..]
        .lines()
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .skip(2)
        .map(|line| line.trim_matches('|').split(" | ").map(|cell| cell.trim().to_owned()).collect())
        .collect()
}

#[test]
fn the_error_code_table_is_the_code_list_row_for_row() {
    let doc = read("docs/protocol.md");
    let rows: Vec<Vec<String>> =
        table_after(&doc, "\n## Error codes").into_iter().map(|row| row[..4].to_vec()).collect();
    let expected: Vec<Vec<String>> = ErrorCode::ALL
        .iter()
        .map(|code| {
            let temporary = if code.temporary() { "yes" } else { "no" };
            vec![
                code.number().to_string(),
                code.name().to_owned(),
                code.http_status().to_string(),
                temporary.to_owned(),
            ]
        })
        .collect();
    assert_eq!(rows, expected, "docs/protocol.md's error table differs from ErrorCode::ALL");
}

#[test]
fn the_close_code_table_is_the_code_list_row_for_row() {
    let doc = read("docs/protocol.md");
    let rows: Vec<Vec<String>> =
        table_after(&doc, "\n## Close codes").into_iter().map(|row| row[..3].to_vec()).collect();
    let expected: Vec<Vec<String>> = CloseCode::ALL
        .iter()
        .map(|code| {
            let reconnect = if code.reconnect() { "yes" } else { "no" };
            vec![code.number().to_string(), code.reason().to_owned(), reconnect.to_owned()]
        })
        .collect();
    assert_eq!(rows, expected, "docs/protocol.md's close table differs from CloseCode::ALL");
}

/// `(METHOD, path)` of every operation in the OpenAPI file: paths are the two-space keys under
/// `paths:`, methods the four-space keys under each.
fn openapi_routes() -> BTreeSet<(String, String)> {
    let yaml = read("docs/openapi/management-api.yaml");
    let mut routes = BTreeSet::new();
    let mut path = None;
    let mut in_paths = false;
    for line in yaml.lines().filter(|line| !line.trim().is_empty()) {
        if !line.starts_with(' ') {
            in_paths = line == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(key) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':'))
            && key.starts_with('/')
        {
            path = Some(key.to_owned());
        } else if let Some(method) = line.strip_prefix("    ").and_then(|l| l.strip_suffix(':'))
            && ["get", "post", "put", "patch", "delete"].contains(&method)
        {
            let path = path.clone().expect("a method under a path");
            routes.insert((method.to_uppercase(), path));
        }
    }
    routes
}

#[test]
fn the_router_the_openapi_file_and_the_endpoint_table_list_the_same_routes() {
    let router: BTreeSet<(String, String)> =
        tributary_control_plane::routes_list().into_iter().map(|(m, p)| (m.to_string(), p)).collect();
    assert_eq!(router.len(), tributary_control_plane::routes_list().len(), "a route is listed twice");
    let openapi = openapi_routes();
    let doc = read("docs/management-api.md");
    let table: BTreeSet<(String, String)> = table_after(&doc, "\n## Endpoints")
        .iter()
        .map(|row| {
            let cell = row[0].trim_start_matches("[`");
            let call = &cell[..cell.find('`').expect("a method and path in backticks")];
            let (method, path) = call.split_once(' ').expect("METHOD PATH");
            (method.to_owned(), path.to_owned())
        })
        .collect();
    assert_eq!(openapi, router, "docs/openapi/management-api.yaml differs from the router");
    assert_eq!(table, router, "docs/management-api.md's endpoint table differs from the router");
}

#[test]
fn the_http_apis_status_mapping_and_retry_list_are_the_code_lists() {
    let doc = read("docs/http-api.md");
    let errors = &doc[doc.find("\n## Errors").expect("an Errors section")..];
    for row in table_after(errors, "Status mapping") {
        let status: u16 = row[0].parse().expect("a status");
        let listed: Vec<String> = row[1]
            .split(", ")
            .map(|item| item.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
            .collect();
        let expected: Vec<String> = ErrorCode::ALL
            .iter()
            .filter(|code| code.http_status() == status)
            .map(|code| format!("{} `{}`", code.number(), code.name()))
            .collect();
        assert_eq!(listed, expected, "docs/http-api.md's {status} row");
    }
    let retry = &errors[errors.find("Retry only errors with").expect("the retry advice")..];
    let retry = &retry[..retry.find(')').expect("the list closes")];
    let mut listed: Vec<&str> = retry.split('`').skip(3).step_by(2).collect();
    listed.sort_unstable();
    let mut temporary: Vec<&str> =
        ErrorCode::ALL.iter().filter(|c| c.temporary()).map(|c| c.name()).collect();
    temporary.sort_unstable();
    assert_eq!(listed, temporary, "docs/http-api.md's retry list");
}

/// Every `fn` name in the workspace's Rust sources.
fn function_names(dir: &std::path::Path, names: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir()
            && name != "target"
            && name != "node_modules"
            && !name.to_string_lossy().starts_with('.')
        {
            function_names(&path, names);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for rest in text.split("fn ").skip(1) {
                let name: String =
                    rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                names.insert(name);
            }
        }
    }
}

/// The documents cite tests by name as evidence: every such name is a test that exists.
#[test]
fn every_test_the_docs_cite_exists() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut names = BTreeSet::new();
    function_names(&root, &mut names);
    let mut missing = Vec::new();
    let docs = std::fs::read_dir(root.join("docs")).unwrap().flatten().map(|e| e.path());
    for doc in docs.chain([root.join("README.md")]).filter(|p| p.extension().is_some_and(|e| e == "md")) {
        let text = std::fs::read_to_string(&doc).unwrap();
        let words = text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
        // Test names are long snake_case sentences; configuration keys and identifiers are short.
        for word in words.filter(|w| w.len() >= 30 && w.matches('_').count() >= 4) {
            let snake = word.starts_with(|c: char| c.is_ascii_lowercase())
                && !word.contains(|c: char| c.is_ascii_uppercase());
            if snake && !names.contains(word) {
                missing.push(format!("{}: {word}", doc.display()));
            }
        }
    }
    assert!(missing.is_empty(), "the docs cite tests that do not exist: {missing:#?}");
}

//! Cache keys.
//!
//! A key is the blake3 hash of everything that determines a step's outputs: the command and env
//! rendered with input artifacts replaced by their digests and output paths by their names (so
//! fresh paths do not defeat the cache), the working directory, the image, and the declared
//! outputs. Input parameter values enter through the rendered command and env. The key does not
//! name the run or the pipeline, so the cache spans runs and pipelines in a workspace.

use std::collections::BTreeMap;

use serde::Serialize;

/// Bumped whenever the key's recipe changes, so old entries stop matching.
const KEY_VERSION: u32 = 1;

#[derive(Debug, Serialize)]
pub struct CacheInput<'a> {
    /// The command, rendered symbolically (see the module docs).
    pub command: &'a [String],
    /// `true` when `command` is a shell string (`sh -c`), so that argv and shell forms differ.
    pub shell: bool,
    pub env: &'a [(String, String)],
    pub workdir: Option<&'a str>,
    pub image: Option<&'a str>,
    /// Digests of input artifacts by input name (or by reference).
    pub input_artifacts: &'a BTreeMap<String, String>,
    /// Declared outputs: name to type.
    pub outputs: &'a BTreeMap<String, String>,
}

/// `blake3:<hex>` of the canonical JSON of the input.
pub fn cache_key(input: &CacheInput<'_>) -> String {
    #[derive(Serialize)]
    struct Keyed<'a> {
        version: u32,
        #[serde(flatten)]
        input: &'a CacheInput<'a>,
    }
    // Serialising plain strings, maps with string keys and sorted maps cannot fail.
    let bytes = serde_json::to_vec(&Keyed {
        version: KEY_VERSION,
        input,
    })
    .unwrap_or_default();
    format!("blake3:{}", blake3::hash(&bytes).to_hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(command: &[&str], env: &[(&str, &str)], arts: &[(&str, &str)]) -> String {
        let command: Vec<String> = command.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let arts: BTreeMap<String, String> = arts
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let outputs = BTreeMap::from([("model".to_string(), "Model".to_string())]);
        cache_key(&CacheInput {
            command: &command,
            shell: false,
            env: &env,
            workdir: None,
            image: None,
            input_artifacts: &arts,
            outputs: &outputs,
        })
    }

    #[test]
    fn key_is_stable_and_sensitive_to_each_input() {
        let base = key(
            &["train", "--lr", "0.1"],
            &[("A", "1")],
            &[("data", "blake3:aa")],
        );
        assert_eq!(
            base,
            key(
                &["train", "--lr", "0.1"],
                &[("A", "1")],
                &[("data", "blake3:aa")]
            )
        );
        assert!(base.starts_with("blake3:"));
        assert_ne!(
            base,
            key(
                &["train", "--lr", "0.2"],
                &[("A", "1")],
                &[("data", "blake3:aa")]
            )
        );
        assert_ne!(
            base,
            key(
                &["train", "--lr", "0.1"],
                &[("A", "2")],
                &[("data", "blake3:aa")]
            )
        );
        assert_ne!(
            base,
            key(
                &["train", "--lr", "0.1"],
                &[("A", "1")],
                &[("data", "blake3:bb")]
            )
        );
        // Argument boundaries matter: ["a b"] is not ["a", "b"].
        assert_ne!(key(&["a b"], &[], &[]), key(&["a", "b"], &[], &[]));
    }
}

//! Which model names a request may use, and which name its answer carries: the one rule for
//! `/v1/score`, `/v1/score/jobs`, batch lines and every other route that takes a `model`.
//!
//! Clients migrating from SGLang or vLLM send the name the old server served (a Hub id such as
//! `Qwen/Qwen2.5-0.5B-Instruct`), and many clients send a fixed placeholder. So the names are
//! configurable (`--served-model-name`, repeatable: the first is the canonical id that
//! `/v1/models` lists, the rest are aliases), `default` is always accepted, and
//! `--accept-any-model-name` accepts every name, as SGLang does. The answer's `model` is the name
//! the request used (the canonical id when it named none, or `default`), so a client sees what it
//! sent. The model the server runs, which names its queue, is not changed by any of this.

use scorer_protocol::DEFAULT_MODEL_NAME;

use crate::ApiError;

/// The names this server answers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedNames {
    /// Canonical id first, then the aliases; never empty.
    names: Vec<String>,
    accept_any: bool,
}

impl ServedNames {
    /// `served` as given by `--served-model-name` (empty: the model's own id, `model_id`, is the
    /// only name); `accept_any` is `--accept-any-model-name`.
    pub fn new(model_id: &str, served: &[String], accept_any: bool) -> Self {
        let mut names: Vec<String> = Vec::new();
        for name in served {
            if !name.is_empty() && !names.contains(name) {
                names.push(name.clone());
            }
        }
        if names.is_empty() {
            names.push(model_id.to_string());
        }
        ServedNames { names, accept_any }
    }

    /// The id `/v1/models` lists and an answer carries when the request named no model.
    pub fn canonical(&self) -> &str {
        &self.names[0]
    }

    /// Every accepted name, canonical first (`default` is accepted too, and with
    /// `--accept-any-model-name` any name).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn accepts_any(&self) -> bool {
        self.accept_any
    }

    /// The name to answer in `model` for a request that named `requested`, or 404 when this
    /// server does not serve it.
    pub fn served_name(&self, requested: Option<&str>) -> Result<String, ApiError> {
        match requested {
            None | Some(DEFAULT_MODEL_NAME) => Ok(self.canonical().to_string()),
            Some(m) if self.accept_any || self.names.iter().any(|n| n == m) => Ok(m.to_string()),
            Some(m) => Err(ApiError::NotFound(format!(
                "The model `{m}` does not exist. This server serves {}.",
                self.listing()
            ))),
        }
    }

    fn listing(&self) -> String {
        let quoted: Vec<String> = self.names.iter().map(|n| format!("`{n}`")).collect();
        quoted.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(served: &[&str], any: bool) -> ServedNames {
        let served: Vec<String> = served.iter().map(|s| s.to_string()).collect();
        ServedNames::new("file-alias", &served, any)
    }

    #[test]
    fn without_the_flag_the_model_id_is_the_only_name() {
        let n = names(&[], false);
        assert_eq!(n.canonical(), "file-alias");
        assert_eq!(n.served_name(None).ok().as_deref(), Some("file-alias"));
        assert_eq!(
            n.served_name(Some("default")).ok().as_deref(),
            Some("file-alias")
        );
        assert_eq!(
            n.served_name(Some("file-alias")).ok().as_deref(),
            Some("file-alias")
        );
        match n.served_name(Some("other")) {
            Err(ApiError::NotFound(msg)) => {
                assert!(
                    msg.contains("`other`") && msg.contains("`file-alias`"),
                    "{msg}"
                )
            }
            other => panic!("expected 404, got {other:?}"),
        }
    }

    #[test]
    fn served_names_are_echoed_and_replace_the_model_id() {
        let n = names(&["Qwen/Qwen2.5-0.5B-Instruct", "qwen", "qwen"], false);
        assert_eq!(n.canonical(), "Qwen/Qwen2.5-0.5B-Instruct");
        assert_eq!(n.names().len(), 2, "duplicates dropped");
        assert_eq!(n.served_name(Some("qwen")).ok().as_deref(), Some("qwen"));
        assert_eq!(
            n.served_name(None).ok().as_deref(),
            Some("Qwen/Qwen2.5-0.5B-Instruct")
        );
        assert!(n.served_name(Some("file-alias")).is_err());
        assert!(n.served_name(Some("QWEN")).is_err(), "names are exact");
    }

    #[test]
    fn accept_any_echoes_every_name() {
        let n = names(&["canon"], true);
        assert_eq!(
            n.served_name(Some("gpt-4o")).ok().as_deref(),
            Some("gpt-4o")
        );
        assert_eq!(n.served_name(None).ok().as_deref(), Some("canon"));
    }
}

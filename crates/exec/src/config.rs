//! Executor settings: the `executors:` section of the workspace's `config.yaml`, overlaid with
//! environment variables.
//!
//! Precedence, highest first: a command-line flag (only `--executor`, which picks the executor),
//! an environment variable, the config file, the built-in default. The ecosystem's own variables
//! are honoured: `CONTAINER_HOST` and `DOCKER_HOST` for the container engine, `RAY_ADDRESS` for
//! the Ray head, `KUBECONFIG` for the cluster.
//!
//! ```yaml
//! executors:
//!   container:
//!     host: unix:///run/podman/podman.sock
//!     pull: if-not-present
//!     network: none
//!     image: localhost/capstan-python:latest   # for steps that name no image
//!   ray:
//!     address: http://127.0.0.1:8265
//!   kubernetes:
//!     kubeconfig: /home/me/.kube/config
//!     context: staging
//!     namespace: ml
//!     image: registry.example/capstan:0.1
//!     image_pull_policy: IfNotPresent
//!     service_account: capstan-steps
//!     node_selector: {pool: gpu}
//!     tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
//!     ttl_seconds_after_finished: 3600
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Settings of every executor. Each field is optional; unset fields take the executor's default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorsConfig {
    #[serde(default)]
    pub container: ContainerConfig,
    #[serde(default)]
    pub ray: RayConfig,
    #[serde(default)]
    pub kubernetes: KubernetesConfig,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerConfig {
    /// The engine's socket, `unix:///path` (`CONTAINER_HOST`, then `DOCKER_HOST`).
    #[serde(default)]
    pub host: Option<String>,
    /// `if-not-present`, `always` or `never` (`CAPSTAN_CONTAINER_PULL`).
    #[serde(default)]
    pub pull: Option<String>,
    /// The container network mode (`CAPSTAN_CONTAINER_NETWORK`).
    #[serde(default)]
    pub network: Option<String>,
    /// The image of steps that name none (`CAPSTAN_CONTAINER_IMAGE`).
    #[serde(default)]
    pub image: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RayConfig {
    /// The Ray head's dashboard (Jobs API) address, e.g. `http://127.0.0.1:8265` (`RAY_ADDRESS`).
    #[serde(default)]
    pub address: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// A kubeconfig file (`KUBECONFIG`); without one, the in-cluster service account, then
    /// `~/.kube/config`.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (`CAPSTAN_KUBERNETES_CONTEXT`); default: the current one.
    #[serde(default)]
    pub context: Option<String>,
    /// Where Jobs are created (`CAPSTAN_KUBERNETES_NAMESPACE`); default: the context's namespace,
    /// else `default`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The image of steps that name none (`CAPSTAN_KUBERNETES_IMAGE`). It must contain the
    /// `capstan` binary, which runs the step wrapper in the pod.
    #[serde(default)]
    pub image: Option<String>,
    /// `Always`, `IfNotPresent` or `Never` (`CAPSTAN_KUBERNETES_IMAGE_PULL_POLICY`).
    #[serde(default)]
    pub image_pull_policy: Option<String>,
    /// The pods' service account (`CAPSTAN_KUBERNETES_SERVICE_ACCOUNT`).
    #[serde(default)]
    pub service_account: Option<String>,
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    /// Seconds a finished Job is kept before the cluster deletes it (default 3600).
    #[serde(default)]
    pub ttl_seconds_after_finished: Option<i32>,
}

/// A pod toleration, in Kubernetes' own field names.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Toleration {
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub operator: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub effect: Option<String>,
    #[serde(default)]
    pub toleration_seconds: Option<i64>,
}

impl ExecutorsConfig {
    /// These settings with the environment's variables, looked up by `var`, taking precedence.
    pub fn with_env(self, var: impl Fn(&str) -> Option<String>) -> ExecutorsConfig {
        let set = |name: &str| var(name).filter(|v| !v.is_empty());
        let c = self.container;
        let r = self.ray;
        let k = self.kubernetes;
        ExecutorsConfig {
            container: ContainerConfig {
                host: set("CONTAINER_HOST")
                    .or_else(|| set("DOCKER_HOST"))
                    .or(c.host),
                pull: set("CAPSTAN_CONTAINER_PULL").or(c.pull),
                network: set("CAPSTAN_CONTAINER_NETWORK").or(c.network),
                image: set("CAPSTAN_CONTAINER_IMAGE").or(c.image),
            },
            ray: RayConfig {
                address: set("RAY_ADDRESS").or(r.address),
            },
            kubernetes: KubernetesConfig {
                kubeconfig: set("KUBECONFIG").map(PathBuf::from).or(k.kubeconfig),
                context: set("CAPSTAN_KUBERNETES_CONTEXT").or(k.context),
                namespace: set("CAPSTAN_KUBERNETES_NAMESPACE").or(k.namespace),
                image: set("CAPSTAN_KUBERNETES_IMAGE").or(k.image),
                image_pull_policy: set("CAPSTAN_KUBERNETES_IMAGE_PULL_POLICY")
                    .or(k.image_pull_policy),
                service_account: set("CAPSTAN_KUBERNETES_SERVICE_ACCOUNT").or(k.service_account),
                ..k
            },
        }
    }

    /// [`ExecutorsConfig::with_env`] with the process environment.
    pub fn with_process_env(self) -> ExecutorsConfig {
        self.with_env(|name| std::env::var(name).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn environment_beats_the_file_and_the_file_beats_nothing() {
        let file: ExecutorsConfig = serde_json::from_value(serde_json::json!({
            "container": {"host": "unix:///file.sock", "image": "file/image"},
            "ray": {"address": "http://file:8265"},
            "kubernetes": {"namespace": "file-ns", "kubeconfig": "/file/kubeconfig",
                           "node_selector": {"pool": "gpu"}, "ttl_seconds_after_finished": 60}
        }))
        .unwrap();
        let merged = file.clone().with_env(vars(&[
            ("DOCKER_HOST", "unix:///docker.sock"),
            ("RAY_ADDRESS", "http://env:8265"),
            ("KUBECONFIG", "/env/kubeconfig"),
            ("CAPSTAN_KUBERNETES_NAMESPACE", ""),
        ]));
        assert_eq!(
            merged.container.host.as_deref(),
            Some("unix:///docker.sock")
        );
        assert_eq!(merged.container.image.as_deref(), Some("file/image"));
        assert_eq!(merged.ray.address.as_deref(), Some("http://env:8265"));
        assert_eq!(
            merged.kubernetes.kubeconfig,
            Some(PathBuf::from("/env/kubeconfig"))
        );
        // An empty variable counts as unset.
        assert_eq!(merged.kubernetes.namespace.as_deref(), Some("file-ns"));
        assert_eq!(merged.kubernetes.node_selector["pool"], "gpu");
        assert_eq!(merged.kubernetes.ttl_seconds_after_finished, Some(60));

        let podman = file.with_env(vars(&[
            ("CONTAINER_HOST", "unix:///podman.sock"),
            ("DOCKER_HOST", "unix:///docker.sock"),
        ]));
        assert_eq!(
            podman.container.host.as_deref(),
            Some("unix:///podman.sock")
        );
        let none = ExecutorsConfig::default().with_env(vars(&[]));
        assert_eq!(none, ExecutorsConfig::default());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = serde_json::from_value::<ExecutorsConfig>(serde_json::json!({
            "kubernetes": {"namespce": "x"}
        }))
        .unwrap_err();
        assert!(err.to_string().contains("namespce"), "{err}");
    }
}

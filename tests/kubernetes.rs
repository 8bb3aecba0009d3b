//! `capstan run --executor kubernetes` where no cluster answers.
//!
//! No Kubernetes API server can run where these tests run; the executor's conversation with one
//! is tested against a mock in `crates/exec/tests/kubernetes.rs`. Here: the command refuses a
//! run before it starts when the API server named by the configuration cannot be reached, and
//! the configuration's precedence (environment over config file) holds.

use crate::util::Dir;

/// A loopback port where nothing listens.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn kubeconfig(dir: &Dir, name: &str, port: u16) -> String {
    dir.write(
        name,
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"http://127.0.0.1:{port}\"}}\n\
             users:\n- name: u\n  user: {{token: t}}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\n\
             current-context: x\n"
        ),
    )
    .display()
    .to_string()
}

fn pipeline(dir: &Dir) -> String {
    dir.write(
        "k.yaml",
        "name: k\nsteps:\n  a:\n    image: registry.invalid/step:1\n    run: [echo, hi]\n",
    )
    .display()
    .to_string()
}

#[test]
fn an_unreachable_api_server_is_reported_before_the_run() {
    let dir = Dir::new();
    let port = closed_port();
    let config = kubeconfig(&dir, "kubeconfig", port);
    let out = crate::util::Run::from(
        dir.command(&["run", &pipeline(&dir), "--executor", "kubernetes"])
            .env("KUBECONFIG", &config)
            .output()
            .unwrap(),
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "the kubernetes executor cannot run steps: cannot reach the Kubernetes API server at http://127.0.0.1:{port}"
        )),
        "{}",
        out.stderr
    );
    assert!(
        out.stdout.trim().is_empty(),
        "no run may start: {}",
        out.stdout
    );
    let runs = dir.run(&["runs", "list", "--output", "json"]);
    assert_eq!(runs.ok().json(), serde_json::json!([]));
}

#[test]
fn kubeconfig_comes_from_the_environment_before_the_config_file() {
    let dir = Dir::new();
    let from_file = closed_port();
    let from_env = closed_port();
    let file_config = kubeconfig(&dir, "file-kubeconfig", from_file);
    let env_config = kubeconfig(&dir, "env-kubeconfig", from_env);
    dir.write(
        "ws/config.yaml",
        &format!("executors:\n  kubernetes:\n    kubeconfig: {file_config}\n    namespace: ml\n"),
    );
    let run = |env: Option<&str>| {
        let mut cmd = dir.command(&["run", &pipeline(&dir), "--executor", "kubernetes"]);
        match env {
            Some(path) => cmd.env("KUBECONFIG", path),
            None => cmd.env_remove("KUBECONFIG"),
        };
        crate::util::Run::from(cmd.output().unwrap())
    };
    let by_file = run(None);
    assert!(
        by_file.stderr.contains(&format!("127.0.0.1:{from_file}")),
        "{}",
        by_file.stderr
    );
    let by_env = run(Some(&env_config));
    assert!(
        by_env.stderr.contains(&format!("127.0.0.1:{from_env}")),
        "{}",
        by_env.stderr
    );
}

#[test]
fn a_mistyped_executor_setting_names_the_config_file() {
    let dir = Dir::new();
    dir.write(
        "ws/config.yaml",
        "executors:\n  kubernetes:\n    namespce: ml\n",
    );
    let out = dir.run(&["run", &pipeline(&dir)]);
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("config.yaml") && out.stderr.contains("namespce"),
        "{}",
        out.stderr
    );
}

//! The example configs that ship with the repository (every `.toml` under `config/` and
//! `deploy/`) load with the real config loader, as written and with every commented-out
//! `key = value` line turned on (an option the comments offer must be valid when an operator
//! uncomments it). The Kubernetes config names files in the pod (`/etc/scoregate/...`), so it is
//! loaded from a copy of the pod's filesystem made of the example Secrets that the kustomize
//! base and the Redis overlay generate: the loader reads the Redis URL and the sealing key, so
//! those example values are checked too. `scripts/check-kubernetes.sh` checks the manifests
//! around it.

use std::path::{Path, PathBuf};

use scoregate::config::{AuthMode, Config, ConfigError, StoreConfig};
use scoregate_testkit::tempdir;

const POD_ETC: &str = "/etc/scoregate/";
const POD_STATE: &str = "/var/lib/scoregate";

/// Validating a `rediss://` URL makes the Redis client build a default TLS config, which asks
/// rustls for the process's provider. The binary compiles in only aws-lc-rs, so rustls finds it;
/// this test process also links ring (a dev-dependency, for the provider benchmark), so the
/// binary's provider is installed as the default here first.
fn init_crypto() {
    let _ =
        rustls::crypto::CryptoProvider::install_default((**scoregate::crypto::provider()).clone());
}

fn read(f: &Path) -> String {
    scoregate::files::read_text_capped(f, scoregate::files::MAX_SMALL_FILE).unwrap()
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.toml` file under `dir`, recursively, sorted.
fn tomls(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "toml") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn examples() -> Vec<PathBuf> {
    let mut all = tomls(&repo().join("config"));
    all.extend(tomls(&repo().join("deploy")));
    assert!(
        all.contains(&repo().join("config/scoregate.toml"))
            && all.contains(&repo().join("deploy/kubernetes/base/scoregate.toml")),
        "the walk finds the examples: {all:?}"
    );
    all
}

/// `text` with every line of the form `# key = value` (an option offered in a comment) turned
/// on; returns the text and how many lines were turned on.
fn uncommented(text: &str) -> (String, usize) {
    let mut n = 0;
    let lines: Vec<&str> = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if rest.split_once(" = ").is_some_and(|(k, _)| {
                    !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.')
                }) =>
            {
                n += 1;
                rest
            }
            _ => l,
        })
        .collect();
    (lines.join("\n"), n)
}

/// The pod's files as deployment.yaml mounts them, from the example Secrets: the admin token,
/// the sealing key and `redis_url` (the base's or the overlay's `secrets/redis-url`).
fn pod_root(redis_url: &Path) -> PathBuf {
    let root = tempdir("k8s-pod");
    let base = repo().join("deploy/kubernetes/base/secrets");
    for (from, to) in [
        (base.join("admin-token"), "admin/token"),
        (base.join("store-key"), "store-key/key"),
        (redis_url.to_path_buf(), "redis/url"),
    ] {
        let to = root.join("etc/scoregate").join(to);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&from, &to).unwrap();
    }
    std::fs::create_dir_all(root.join("etc/scoregate/config")).unwrap();
    root
}

/// Loads `text` (the contents of the example `file`) as `scoregate serve` would read it where
/// it is deployed: a config naming the pod's paths is loaded inside a copy of the pod.
fn load_as_deployed(file: &Path, text: &str) -> Vec<Result<Config, ConfigError>> {
    init_crypto();
    if !text.contains(POD_ETC) {
        return vec![Config::parse(text, file)];
    }
    let overlay = repo().join("deploy/kubernetes/overlays/redis/secrets/redis-url");
    [
        repo().join("deploy/kubernetes/base/secrets/redis-url"),
        overlay,
    ]
    .iter()
    .map(|url| {
        let root = pod_root(url);
        let text = text
            .replace(POD_ETC, &format!("{}/etc/scoregate/", root.display()))
            .replace(POD_STATE, &format!("{}/var/lib/scoregate", root.display()));
        let path = root.join("etc/scoregate/config/scoregate.toml");
        std::fs::write(&path, &text).unwrap();
        let r = Config::load(&path);
        std::fs::remove_dir_all(&root).unwrap();
        r
    })
    .collect()
}

#[test]
fn every_example_config_loads() {
    for f in examples() {
        for r in load_as_deployed(&f, &read(&f)) {
            if let Err(e) = r {
                panic!("{} does not load:\n{e}", f.display());
            }
        }
    }
}

#[test]
fn every_option_offered_in_an_example_comment_is_valid() {
    let mut turned_on = 0;
    for f in examples() {
        let (text, n) = uncommented(&read(&f));
        turned_on += n;
        for r in load_as_deployed(&f, &text) {
            if let Err(e) = r {
                panic!(
                    "{} with its commented-out options turned on does not load:\n{e}",
                    f.display()
                );
            }
        }
    }
    assert!(
        turned_on >= 5,
        "the examples offer options in comments: {turned_on}"
    );
}

/// What the manifests rely on (deployment.yaml mounts the pod paths and probes the admin port;
/// the Redis overlay's ACL allows only the `scoregate:` prefix; Kubernetes Secrets are swapped by
/// a symlink that watch mode follows), read through the loader rather than as TOML text.
#[test]
fn the_kubernetes_config_is_a_fleet_replica() {
    let f = repo().join("deploy/kubernetes/base/scoregate.toml");
    let loaded = load_as_deployed(&f, &read(&f));
    assert_eq!(
        loaded.len(),
        2,
        "with the base's and the overlay's Redis URL"
    );
    for c in loaded {
        let c = c.unwrap();
        let StoreConfig::Redis(r) = &c.store else {
            panic!("the Kubernetes example shares its state: {:?}", c.store);
        };
        assert_eq!(r.prefix, "scoregate:");
        assert!(
            r.secret_key.is_some() && !r.allow_plaintext_secrets,
            "secrets are sealed"
        );
        assert!(
            !r.display_url.contains("CHANGE-ME"),
            "the password is never shown: {}",
            r.display_url
        );
        assert_eq!(c.admin.address.to_string(), "0.0.0.0:9090");
        assert!(
            c.admin.token_file.ends_with("etc/scoregate/admin/token"),
            "the admin token comes from a Secret: {}",
            c.admin.token_file.display()
        );
        assert!(
            c.state_dir.ends_with("var/lib/scoregate"),
            "{}",
            c.state_dir.display()
        );
        assert!(
            c.server.watch,
            "certificate renewals arrive by a symlink swap"
        );
        assert!(
            !c.listen.proxy_protocol,
            "off unless an L4 balancer sends it"
        );
        assert_eq!(c.services.len(), 1);
        assert_eq!(c.services[0].auth, AuthMode::Key);
    }
}

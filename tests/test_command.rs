//! The README's test command, `scripts/test`, on machines it has to cope with:
//! one without redis-server where it can install it (it does, says so, then runs
//! the suite and counts), and ones where it cannot (it stops before running
//! anything and prints the command a person would run). Each runs the script
//! with a PATH of its own: real basic tools, and stand-ins for cargo (which
//! records its calls), apt-get (which "installs" by linking the real Redis
//! binaries), sudo, id and the pip-installed tools.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The real binary `name` from this process's PATH.
fn real(name: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is needed on PATH for this test"))
}

struct Machine {
    dir: PathBuf,
}

impl Machine {
    /// A bin directory with the basic tools the script uses, and a cargo that
    /// records its calls and passes five tests.
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("keel-test-command-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for tool in ["bash", "env", "awk", "tee", "mktemp", "rm", "grep", "cat", "dirname", "id", "ln", "true"] {
            std::os::unix::fs::symlink(real(tool), dir.join(tool)).unwrap();
        }
        let machine = Self { dir };
        machine.script(
            "cargo",
            r#"echo "cargo $*" >> "$(dirname "$0")/calls.log"
               [ "$1" = test ] && echo "test result: ok. 5 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out"
               exit 0"#,
        );
        machine.script("rustfmt", "exit 0");
        machine.script("cargo-clippy", "exit 0");
        machine.script("openapi-spec-validator", "exit 0");
        machine.script("st", "echo 'st, version 4.32.5'");
        machine.script("node", "exit 0");
        machine.script("chromium", "exit 0");
        // An npm whose `ls` finds the SDKs missing, so the script installs them.
        machine.script(
            "npm",
            r#"echo "npm $*" >> "$(dirname "$0")/calls.log"
               [ "$1" = ls ] && exit 1
               exit 0"#,
        );
        machine
    }

    fn script(&self, name: &str, body: &str) {
        let path = self.dir.join(name);
        std::fs::write(&path, format!("#!{}\n{body}\n", real("bash").display())).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// An apt-get that records its calls and, asked to install, links the real
    /// redis-server and redis-cli into this machine's PATH.
    fn with_apt_get(self) -> Self {
        let (server, cli) = (real("redis-server"), real("redis-cli"));
        self.script(
            "apt-get",
            &format!(
                r#"echo "apt-get $*" >> "$(dirname "$0")/calls.log"
                   if [ "$1" = install ]; then
                     ln -sf {} "$(dirname "$0")/redis-server"
                     ln -sf {} "$(dirname "$0")/redis-cli"
                     case "$*" in *chromium*) ln -sf {} "$(dirname "$0")/chromium";; esac
                   fi"#,
                server.display(),
                cli.display(),
                real("true").display()
            ),
        );
        self
    }

    fn without_root(self) -> Self {
        std::fs::remove_file(self.dir.join("id")).unwrap();
        self.script("id", "echo 1000");
        self
    }

    fn with_sudo(self) -> Self {
        self.script("sudo", r#"[ "$1" = -n ] && shift; exec "$@""#);
        self
    }

    fn run(&self) -> (i32, String, String) {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new(real("bash"))
            .arg(repo.join("scripts/test"))
            .env_clear()
            .env("PATH", &self.dir)
            .env("HOME", &self.dir)
            // The browser test's Chromium: this machine's stand-in.
            .env("CHROMIUM", self.dir.join("chromium"))
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(self.dir.join("calls.log")).unwrap_or_default()
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn without_redis_it_installs_it_then_runs_fmt_clippy_and_the_tests_and_counts() {
    let machine = Machine::new("installs").with_apt_get().without_root().with_sudo();
    let (code, stdout, stderr) = machine.run();
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("installing redis-server redis-tools with apt-get"), "says what it installs: {stdout}");
    assert!(stdout.contains("Redis server v="), "the installed redis-server answers: {stdout}");
    assert!(stdout.contains("installing them with npm ci in sdk-tests/"), "says it installs the SDKs: {stdout}");
    let calls = machine.calls();
    let order: Vec<&str> = calls.lines().collect();
    assert_eq!(
        order,
        [
            "apt-get update -qq",
            "apt-get install -y -qq redis-server redis-tools",
            "npm ls --silent",
            "npm ci --no-audit --no-fund --silent",
            "npm ls --silent",
            "npm ci --no-audit --no-fund --silent",
            "cargo fmt --all --check",
            "cargo clippy --workspace --all-targets --locked -- -D warnings",
            "cargo test --workspace --locked",
        ],
        "installs first (Redis, the pinned SDKs, playwright-core), then fmt, clippy and the whole suite"
    );
    assert!(stdout.contains("installing it with npm ci in ui-tests/"), "says it installs playwright-core: {stdout}");
    assert!(stdout.trim_end().ends_with("keel: 5 passed, 0 failed"), "closes with the count: {stdout}");
}

#[test]
fn without_root_it_stops_before_running_anything_and_says_the_command() {
    let machine = Machine::new("no-root").with_apt_get().without_root();
    let (code, stdout, stderr) = machine.run();
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    assert!(stderr.contains("needs root"), "{stderr}");
    assert!(stderr.contains("sudo apt-get install -y redis-server redis-tools"), "{stderr}");
    assert_eq!(machine.calls(), "", "nothing installed, nothing run");
}

#[test]
fn without_a_package_manager_it_stops_before_running_anything() {
    let machine = Machine::new("no-apt");
    let (code, stdout, stderr) = machine.run();
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    assert!(stderr.contains("no package manager"), "{stderr}");
    assert!(stderr.contains("https://redis.io/downloads"), "{stderr}");
    assert_eq!(machine.calls(), "", "the suite did not half-run");
}

#[test]
fn ci_runs_exactly_the_readme_command() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ci = std::fs::read_to_string(repo.join(".ci/run")).unwrap();
    assert!(ci.lines().any(|l| l.trim() == "exec scripts/test"), ".ci/run runs scripts/test: {ci}");
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let first_block = readme.split("```sh").nth(1).unwrap().split("```").next().unwrap();
    assert!(first_block.contains("cargo run -- dev") && first_block.contains("scripts/test"), "{first_block}");
}

#[test]
fn without_node_it_installs_it_or_stops_before_running_anything() {
    let machine = Machine::new("no-node").with_apt_get().without_root().with_sudo();
    std::fs::remove_file(machine.dir.join("node")).unwrap();
    let (code, stdout, stderr) = machine.run();
    // The stand-in apt-get "installs" only Redis: node is still missing after.
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    assert!(stdout.contains("installing nodejs npm with apt-get"), "{stdout}");
    assert!(stderr.contains("sudo apt-get install -y nodejs npm"), "{stderr}");
    let calls = machine.calls();
    assert!(calls.contains("apt-get install -y -qq nodejs npm"), "{calls}");
    assert!(!calls.contains("cargo"), "the suite did not half-run: {calls}");
}

#[test]
fn without_chromium_it_installs_it_for_the_browser_test() {
    let machine = Machine::new("no-chromium").with_apt_get().without_root().with_sudo();
    std::fs::remove_file(machine.dir.join("chromium")).unwrap();
    let (code, stdout, stderr) = machine.run();
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("installing chromium chromium-driver with apt-get"), "{stdout}");
    let calls = machine.calls();
    let install = calls.find("apt-get install -y -qq chromium chromium-driver").expect("installed chromium");
    assert!(install < calls.find("cargo test").unwrap(), "before the suite: {calls}");
}

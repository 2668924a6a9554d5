//! Records the git revision for `wsgate --version`: `WSGATE_GIT_REVISION` from the environment
//! when set (a container build has no repository: `--build-arg GIT_REVISION=…`), else asked of
//! git, else "unknown".

use std::path::Path;
use std::process::Command;

/// A git command's trimmed stdout, or None when git or the repository is missing.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then_some(())?;
    Some(String::from_utf8(out.stdout).ok()?.trim().to_owned())
}

fn main() {
    // A packaged crate or a source tarball has no repository to ask. Uncommitted changes
    // are not marked: watching the index would rebuild the crate on every `git add`.
    println!("cargo:rerun-if-env-changed=WSGATE_GIT_REVISION");
    let revision = std::env::var("WSGATE_GIT_REVISION")
        .ok()
        .filter(|r| !r.trim().is_empty() && r != "unknown")
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=WSGATE_GIT_REVISION={revision}");

    // Rebuild when HEAD moves (a commit, a checkout). In a worktree these files live
    // outside `.git/`, so ask git where they are.
    let mut watched = vec!["HEAD".to_owned()];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            if Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}

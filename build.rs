//! Records the git revision the binary was built from, for
//! `tenantwatch_build_info{revision}` ("unknown" outside a git checkout).

use std::process::Command;

/// The output of `git ARGS`, trimmed, when git succeeds.
fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty())
}

fn main() {
    let revision = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=TENANTWATCH_REVISION={revision}");
    // Where HEAD and the branches really are: in a `git worktree`, `.git`
    // is a file and HEAD lives under the main checkout's `.git/worktrees/`.
    // A path that does not exist would make cargo rerun this script, and
    // rebuild the crate, on every build.
    // Only this checkout's branch: other worktrees' commits do not change
    // the revision.
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    let mut watched = false;
    for path in ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
        if let Some(found) = git(&["rev-parse", "--git-path", path])
            .filter(|found| std::path::Path::new(found).exists())
        {
            println!("cargo:rerun-if-changed={found}");
            watched = true;
        }
    }
    if !watched {
        // Outside a git checkout: nothing to follow but this script.
        println!("cargo:rerun-if-changed=build.rs");
    }
}

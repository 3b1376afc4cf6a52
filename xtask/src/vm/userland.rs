//! The parts of the initramfs that come from this machine: busybox for the
//! basics, real tools where busybox's are not enough, python3 for test
//! servers, and the `/init` that runs the tests.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::{build::TestBinary, image::Image};
use crate::tools;

/// Bump when what `base_image` puts in changes, to rebuild cached bases.
const BASE_FORMAT: u32 = 3;

/// Parts of python's stdlib that no test server needs (about 35 of 54 MB).
const PYTHON_SKIP: &[&str] = &[
    "config-",
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "lib2to3",
    "pydoc_data",
    "distutils",
    "ensurepip",
    "site-packages",
    "dist-packages",
    "venv",
];

const ETC_FILES: &[(&str, &str)] = &[
    // tcpdump drops to its own user after opening the capture.
    (
        "/etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\ntcpdump:x:100:100::/nonexistent:/bin/false\n\
         nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    ),
    (
        "/etc/group",
        "root:x:0:\ntcpdump:x:100:\nnogroup:x:65534:\n",
    ),
    ("/etc/hosts", "127.0.0.1 localhost\n::1 localhost\n"),
    (
        "/etc/nsswitch.conf",
        "passwd: files\ngroup: files\nhosts: files\nservices: files\nprotocols: files\n",
    ),
    ("/etc/resolv.conf", ""),
];

fn busybox() -> Result<PathBuf> {
    ["/usr/bin/busybox", "/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("busybox is not installed (apt-get install busybox-static)")
}

/// Everything in `base_image` comes from these host files; their sizes and
/// mtimes decide whether a cached base is still right.
pub fn base_fingerprint() -> Result<String> {
    let mut fp = format!("format {BASE_FORMAT}\n");
    let tools = tools::vm_paths(true)
        .chain(tools::vm_paths(false))
        .map(PathBuf::from);
    for p in tools.chain([busybox()?, python_lib()?]) {
        if let Ok(m) = fs::metadata(&p) {
            fp.push_str(&format!("{} {} {}\n", p.display(), m.len(), m.mtime()));
        }
    }
    Ok(fp)
}

fn python_lib() -> Result<PathBuf> {
    let real = fs::canonicalize("/usr/bin/python3")
        .context("python3 is not installed (apt-get install python3)")?;
    let name = real
        .file_name()
        .and_then(|n| n.to_str())
        .context("odd python3 path")?;
    Ok(Path::new("/usr/lib").join(name))
}

/// The userland shared by all kernels.
pub fn base_image() -> Result<Image> {
    let mut img = Image::default();
    // Debian's merged /usr, as on the host, so ldd's paths hold in the VM.
    for d in ["bin", "sbin", "lib", "lib64"] {
        img.symlink(&format!("/{d}"), &format!("usr/{d}"))?;
    }
    for d in [
        "/usr/bin",
        "/usr/sbin",
        "/usr/lib",
        "/usr/lib64",
        "/dev",
        "/proc",
        "/sys",
        "/run",
        "/tmp",
        "/root",
        "/etc",
        "/mnt",
    ] {
        img.dir(d)?;
    }
    img.symlink("/var/run", "../run")?;
    img.char_dev("/dev/console", 5, 1)?;
    img.char_dev("/dev/null", 1, 3)?;
    for (path, content) in ETC_FILES {
        img.bytes(path, *content, 0o644)?;
    }
    for extra in ["/etc/services", "/etc/protocols"] {
        if Path::new(extra).exists() {
            img.host_path(Path::new(extra))?;
        }
    }

    // The distribution's tools at their paths (see `tools::InVm`).
    for tool in tools::vm_paths(true) {
        img.host_binary(Path::new(tool))
            .with_context(|| format!("{tool} is needed in the VM image: install it"))?;
    }
    for tool in tools::vm_paths(false).filter(|t| Path::new(t).exists()) {
        img.host_binary(Path::new(tool))?;
    }
    // dash as /bin/sh: `sh -c "ip ..."` from a test then runs the real ip.
    img.symlink("/usr/bin/sh", "dash")?;

    let pylib = python_lib()?;
    img.host_tree(&pylib, &|p: &Path| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        p.parent() == Some(&pylib) && PYTHON_SKIP.iter().any(|s| name.starts_with(s))
    })?;

    // busybox for everything else, as links for the applets no real tool
    // above provides.
    let bb = busybox()?;
    img.host_binary(&bb)?;
    let list = Command::new(&bb).arg("--list").output()?;
    if !list.status.success() {
        bail!("busybox --list failed");
    }
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let taken = ["/usr/bin/", "/usr/sbin/"]
            .iter()
            .any(|d| img.contains(&format!("{d}{applet}")));
        if !taken && !applet.is_empty() && applet != "busybox" {
            img.symlink(&format!("/usr/bin/{applet}"), "busybox")?;
        }
    }
    // busybox may have been found as /usr/bin/busybox or /bin/busybox.
    if !img.contains("/usr/bin/busybox") {
        img.file_at(Path::new("/usr/bin/busybox"), &bb)?;
    }
    Ok(img)
}

/// The per-run part: netpath and netpath-cni in /usr/bin and the test
/// binaries in /tests, shared by every kernel.
pub fn tests_image(binaries: &[PathBuf], tests: &[TestBinary]) -> Result<Image> {
    let mut img = Image::default();
    for bin in binaries {
        let name = bin.file_name().context("binary without a file name")?;
        img.file_at(&Path::new("/usr/bin").join(name), bin)?;
    }
    for t in tests {
        img.file_at(Path::new(&test_path(t)), &t.path)
            .with_context(|| format!("adding test binary {}", t.path.display()))?;
    }
    Ok(img)
}

/// One kernel's `/init`, running the test binaries of its plan (see
/// `plan`); the archive it is in comes last, after [`tests_image`]'s.
pub fn init_image(
    tests: &[&TestBinary],
    test_args: &[String],
    per_test_timeout_s: u64,
) -> Result<Image> {
    let mut runs = String::new();
    for t in tests {
        runs.push_str(&format!("run_test {} {}\n", t.name, test_path(t)));
    }
    let args: Vec<String> = test_args.iter().map(|a| shell_quote(a)).collect();
    let init = INIT
        .replace("@TEST_ARGS@", &args.join(" "))
        .replace("@TEST_TIMEOUT@", &per_test_timeout_s.to_string())
        .replace("@RUN_TESTS@", &runs);
    let mut img = Image::default();
    img.bytes("/init", init, 0o755)?;
    Ok(img)
}

fn test_path(t: &TestBinary) -> String {
    format!("/tests/{}", t.name)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// busybox sh runs /init (dash lacks nothing here, but busybox is the one
/// thing certain to be static). Result lines start with `NETPATH-VM-` and
/// are what the host judges; qemu's exit status means nothing.
const INIT: &str = r#"#!/usr/bin/busybox sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin
export HOME=/root TERM=dumb RUST_BACKTRACE=1 NETPATH_BIN=/usr/bin/netpath
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t bpf bpf /sys/fs/bpf
mkdir -p /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mkdir -p /run/netns /dev/pts /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null
mount -t tmpfs tmpfs /dev/shm
/usr/sbin/ip link set lo up
hostname netpath-vm
# Before 5.11 BPF maps are charged to RLIMIT_MEMLOCK (64 KiB by default).
ulimit -l unlimited
echo "NETPATH-VM-BOOT kernel=$(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime)"
while read -r m; do
    insmod "$m" || echo "NETPATH-VM-MODULE-FAIL $m"
done < /etc/netpath-vm/modules
echo "NETPATH-VM-MODULES $(cut -d' ' -f1 /proc/modules | sort | tr '\n' ' ')"
# The tools the tests lean on, so a broken image shows as such.
tools=ok
{ /usr/sbin/ip netns add vmcheck && nsenter --net=/run/netns/vmcheck /usr/sbin/ip link set lo up \
    && /usr/sbin/ip netns del vmcheck; } || tools="ip-netns"
t0=$(cut -d' ' -f1 /proc/uptime)
python3 -c 'import http.server, socketserver, socket, json, threading' || tools="$tools python3"
echo "NETPATH-VM-TIMING python3-import-http.server $(awk "BEGIN { print $(cut -d' ' -f1 /proc/uptime) - $t0 }")s"
curl --version >/dev/null || tools="$tools curl"
echo "NETPATH-VM-TOOLS $tools"
bins=0
failed=0
run_test() {
    bins=$((bins + 1))
    echo "NETPATH-VM-BEGIN $1"
    start=$(cut -d' ' -f1 /proc/uptime)
    (cd /tmp && timeout -s KILL @TEST_TIMEOUT@ "$2" @TEST_ARGS@)
    rc=$?
    [ "$rc" = 0 ] || failed=$((failed + 1))
    echo "NETPATH-VM-END $1 rc=$rc start=$start end=$(cut -d' ' -f1 /proc/uptime)"
}
@RUN_TESTS@
echo "NETPATH-VM-DONE kernel=$(uname -r) binaries=$bins failed=$failed uptime=$(cut -d' ' -f1 /proc/uptime)"
sync
poweroff -f
"#;

//! Debian cloud kernels: download through a private apt configuration, then
//! keep only what a VM needs (the vmlinuz and a cpio of the wanted modules).
//!
//! Kernel package names carry an ABI number and disappear from the archive
//! when superseded, so the current name is looked up through the
//! `linux-image-cloud-amd64` meta package, and what was built from it is
//! cached per package name: later runs need no network at all.

use std::{
    collections::{BTreeMap, HashSet},
    env, fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, bail};

use super::{image::Image, run_checked};

/// Modules the datapath and the tests need; the cloud kernels build them as
/// modules (their dependencies, e.g. llc and stp for bridge, come along).
const REQUIRED_MODULES: &[&str] = &["veth", "bridge", "sch_ingress", "cls_bpf"];
/// Loaded when the kernel has them as modules; fine to be missing.
const OPTIONAL_MODULES: &[&str] = &["dummy", "act_bpf"];

/// How long a downloaded package index is trusted before `apt-get update`.
const INDEX_MAX_AGE: Duration = Duration::from_secs(12 * 3600);

pub struct Series {
    pub name: &'static str,
    /// (archive path below the mirror, suite)
    suites: &'static [(&'static str, &'static str)],
}

pub const SERIES: &[Series] = &[
    Series {
        name: "5.10",
        suites: &[
            ("debian", "bullseye"),
            ("debian-security", "bullseye-security"),
        ],
    },
    Series {
        name: "6.1",
        suites: &[
            ("debian", "bookworm"),
            ("debian-security", "bookworm-security"),
        ],
    },
    // bookworm-backports is signed with keys every Debian 12 keyring has,
    // which trixie's are not.
    Series {
        name: "6.12",
        suites: &[("debian", "bookworm-backports")],
    },
];

pub struct Kernel {
    pub series: &'static str,
    pub package: String,
    pub release: String,
    pub vmlinuz: PathBuf,
    pub modules_cpio: PathBuf,
}

/// A private apt: own sources, index and cache directories, and an empty
/// dpkg status, so neither the machine's apt state nor its installed
/// packages are read or changed.
struct Apt {
    root: PathBuf,
}

impl Apt {
    fn new(root: PathBuf, series: &Series) -> Result<Self> {
        for d in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(root.join(d))?;
        }
        let mirror = env::var("NETPATH_VM_DEBIAN_MIRROR")
            .unwrap_or_else(|_| "http://deb.debian.org".to_string());
        let sources: String = series
            .suites
            .iter()
            .map(|(path, suite)| {
                format!(
                    "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {mirror}/{path} {suite} main\n"
                )
            })
            .collect();
        fs::write(root.join("sources.list"), sources)?;
        fs::write(root.join("status"), "")?;
        Ok(Self { root })
    }

    fn cmd(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let r = &self.root;
        for (k, v) in [
            ("Dir::Etc::sourcelist", r.join("sources.list")),
            ("Dir::Etc::sourceparts", "-".into()),
            ("Dir::State::Lists", r.join("lists")),
            ("Dir::State::status", r.join("status")),
            ("Dir::Cache", r.join("cache")),
            ("APT::Architecture", "amd64".into()),
            ("Acquire::Languages", "none".into()),
            // As root apt would drop to _apt, which cannot write our cache.
            ("APT::Sandbox::User", "root".into()),
        ] {
            cmd.arg("-o").arg(format!("{k}={}", v.display()));
        }
        cmd
    }

    fn index_age(&self) -> Option<Duration> {
        let stamp = fs::metadata(self.root.join("updated")).ok()?;
        SystemTime::now()
            .duration_since(stamp.modified().ok()?)
            .ok()
    }

    fn update(&self) -> Result<()> {
        run_checked(self.cmd("apt-get").args(["-q", "update"]))?;
        fs::write(self.root.join("updated"), "")?;
        Ok(())
    }

    /// The versioned image package the meta package currently points at.
    fn current_image(&self, series: &str) -> Result<String> {
        let out = self
            .cmd("apt-cache")
            .args(["depends", "linux-image-cloud-amd64"])
            .output()
            .context("running apt-cache")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let prefix = format!("linux-image-{series}.");
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("Depends:"))
            .map(str::trim)
            .find(|p| p.starts_with(&prefix))
            .map(str::to_string)
            .with_context(|| {
                format!(
                    "no {prefix}*-cloud-amd64 behind linux-image-cloud-amd64: {}{}",
                    text.trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )
            })
    }
}

/// Downloads (or finds in the cache) the kernel of `series` and prepares its
/// vmlinuz and module archive.
pub fn prepare(series: &'static Series, cache: &Path) -> Result<Kernel> {
    let name = series.name;
    let apt = Apt::new(cache.join("apt").join(name), series)?;
    let series_dir = cache.join("kernels").join(name);
    fs::create_dir_all(&series_dir)?;
    let current_file = series_dir.join("current");
    let offline = env::var_os("NETPATH_VM_OFFLINE").is_some();

    let fresh = apt.index_age().is_some_and(|a| a < INDEX_MAX_AGE);
    if !offline && !fresh {
        println!(
            "vm-test: {name}: apt-get update (private lists in {})",
            apt.root.display()
        );
        if let Err(e) = apt.update() {
            // A cached kernel is still good when the network is not.
            if current_file.exists() {
                eprintln!("vm-test: {name}: apt-get update failed, using the cached kernel: {e:#}");
            } else {
                return Err(e.context(format!("downloading the package index for {name}")));
            }
        }
    }
    let package = match apt.current_image(name) {
        Ok(p) => p,
        Err(e) => match fs::read_to_string(&current_file) {
            Ok(p) => {
                eprintln!("vm-test: {name}: {e:#}; using the cached {}", p.trim());
                p.trim().to_string()
            }
            Err(_) => return Err(e),
        },
    };

    let dir = series_dir.join(&package);
    let ready = dir.join("release");
    if !ready.exists() {
        build_kernel_dir(&apt, &package, &dir)
            .with_context(|| format!("preparing kernel package {package}"))?;
    }
    fs::write(&current_file, &package)?;
    prune_superseded(&series_dir, &package);
    let release = fs::read_to_string(&ready)?.trim().to_string();
    Ok(Kernel {
        series: name,
        package,
        release,
        vmlinuz: dir.join("vmlinuz"),
        modules_cpio: dir.join("modules.cpio"),
    })
}

/// Drops the prepared trees of superseded packages so a CI cache stays small.
fn prune_superseded(series_dir: &Path, current: &str) {
    let Ok(entries) = fs::read_dir(series_dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.path().is_dir() && e.file_name() != current {
            // Best effort: a leftover directory costs only disk space.
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

fn build_kernel_dir(apt: &Apt, package: &str, dir: &Path) -> Result<()> {
    let work = dir.join("work");
    if work.exists() {
        fs::remove_dir_all(&work)?;
    }
    fs::create_dir_all(&work)?;
    println!("vm-test: downloading {package}");
    run_checked(
        apt.cmd("apt-get")
            .args(["-q", "download", package])
            .current_dir(&work),
    )?;
    let deb = fs::read_dir(&work)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download left no .deb")?;
    let root = work.join("root");
    run_checked(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;

    // The package may keep modules in lib/modules (bookworm) or
    // usr/lib/modules (trixie); make both paths work for any depmod.
    let (lib, usr_lib) = (root.join("lib/modules"), root.join("usr/lib/modules"));
    let modules_root = if lib.is_dir() {
        fs::create_dir_all(root.join("usr/lib"))?;
        std::os::unix::fs::symlink("../../lib/modules", &usr_lib)?;
        lib
    } else {
        fs::create_dir_all(root.join("lib"))?;
        std::os::unix::fs::symlink("../usr/lib/modules", &lib)?;
        usr_lib
    };
    let release = fs::read_dir(&modules_root)?
        .filter_map(std::result::Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .context("the package has no modules directory")?;
    let mdir = modules_root.join(&release);

    // Debian's packages ship no modules.dep.
    run_checked(Command::new("depmod").arg("-b").arg(&root).arg(&release))?;
    let modules = ModuleDeps::read(&mdir)?;
    let mut image = Image::default();
    let mut load = Vec::new();
    for (wanted, required) in REQUIRED_MODULES
        .iter()
        .map(|m| (m, true))
        .chain(OPTIONAL_MODULES.iter().map(|m| (m, false)))
    {
        match modules.path_of(wanted) {
            Some(p) => modules.load_order(&p, &mut load),
            None if modules.builtin.contains(&norm(wanted)) => {}
            None if required => bail!("{release} has no module {wanted}, built in or loadable"),
            None => println!("vm-test: {release}: no {wanted} module, skipped"),
        }
    }
    // Decompressed, so busybox insmod needs no xz/zstd support; placed under
    // the real usr/lib (the base image's /lib is a symlink to it).
    let image_dir = format!("/usr/lib/modules/{release}");
    let mut dep_lines = String::new();
    let mut load_list = String::new();
    for m in &load {
        let plain = strip_compression(m);
        image.bytes(
            &format!("{image_dir}/{plain}"),
            decompress(&mdir.join(m))?,
            0o644,
        )?;
        let deps: Vec<_> = modules
            .deps
            .get(m)
            .into_iter()
            .flatten()
            .map(|d| strip_compression(d))
            .collect();
        dep_lines.push_str(&format!("{plain}: {}\n", deps.join(" ")));
        load_list.push_str(&format!("{image_dir}/{plain}\n"));
    }
    image.bytes(&format!("{image_dir}/modules.dep"), dep_lines, 0o644)?;
    image.bytes("/etc/netpath-vm/modules", load_list, 0o644)?;
    image.write_cpio(&dir.join("modules.cpio"))?;

    let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
    fs::copy(&vmlinuz, dir.join("vmlinuz"))
        .with_context(|| format!("copying {}", vmlinuz.display()))?;
    // Only the two artifacts are kept: the .deb and its tree are ~150 MB.
    fs::remove_dir_all(&work)?;
    fs::write(dir.join("release"), &release)?;
    Ok(())
}

/// `modules.dep` of the unpacked package.
struct ModuleDeps {
    /// relative module path -> relative paths of its dependencies
    deps: BTreeMap<String, Vec<String>>,
    builtin: HashSet<String>,
}

/// Module names use `-` and `_` interchangeably.
fn norm(name: &str) -> String {
    name.replace('-', "_")
}

fn strip_compression(path: &str) -> &str {
    [".xz", ".zst", ".gz"]
        .iter()
        .find_map(|s| path.strip_suffix(s))
        .unwrap_or(path)
}

fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    norm(strip_compression(file).trim_end_matches(".ko"))
}

impl ModuleDeps {
    fn read(mdir: &Path) -> Result<Self> {
        let text =
            fs::read_to_string(mdir.join("modules.dep")).context("depmod wrote no modules.dep")?;
        let deps = text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(m, d)| {
                (
                    m.to_string(),
                    d.split_whitespace().map(String::from).collect(),
                )
            })
            .collect();
        let builtin = fs::read_to_string(mdir.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .map(module_name)
            .collect();
        Ok(Self { deps, builtin })
    }

    fn path_of(&self, name: &str) -> Option<String> {
        let want = norm(name);
        self.deps.keys().find(|p| module_name(p) == want).cloned()
    }

    /// Appends `module` after everything it depends on (each once).
    fn load_order(&self, module: &str, out: &mut Vec<String>) {
        if out.iter().any(|m| m == module) {
            return;
        }
        for d in self.deps.get(module).into_iter().flatten() {
            self.load_order(d, out);
        }
        out.push(module.to_string());
    }
}

fn decompress(path: &Path) -> Result<Vec<u8>> {
    let tool = match path.extension().and_then(|x| x.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        Some("gz") => "gzip",
        _ => return fs::read(path).with_context(|| format!("reading {}", path.display())),
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("running {tool} (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "{tool} -dc {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_and_load_order() {
        assert_eq!(
            module_name("kernel/net/sched/sch_ingress.ko.xz"),
            "sch_ingress"
        );
        assert_eq!(module_name("kernel/net/bridge/bridge.ko"), "bridge");
        assert_eq!(strip_compression("a/b.ko.zst"), "a/b.ko");
        let deps = ModuleDeps {
            deps: [
                ("br.ko.xz", vec!["stp.ko.xz", "llc.ko.xz"]),
                ("stp.ko.xz", vec!["llc.ko.xz"]),
                ("llc.ko.xz", vec![]),
            ]
            .into_iter()
            .map(|(m, d)| (m.to_string(), d.into_iter().map(String::from).collect()))
            .collect(),
            builtin: HashSet::new(),
        };
        assert_eq!(deps.path_of("br").as_deref(), Some("br.ko.xz"));
        let mut order = Vec::new();
        deps.load_order("br.ko.xz", &mut order);
        assert_eq!(order, ["llc.ko.xz", "stp.ko.xz", "br.ko.xz"]);
    }
}

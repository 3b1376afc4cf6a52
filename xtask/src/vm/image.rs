//! An initramfs image described in memory and written as a `newc` cpio archive.
//!
//! Writing the archive ourselves (instead of `find | cpio`) means no staging
//! tree, entries owned by root whoever builds it, device nodes (`/dev/console`)
//! without mknod privileges, and a byte-identical archive for identical input.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{self, BufWriter, Read, Write},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Component, Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

#[derive(Debug, Clone)]
enum Entry {
    Dir { mode: u32 },
    File { src: PathBuf, mode: u32 },
    Bytes { data: Vec<u8>, mode: u32 },
    Symlink { target: PathBuf },
    CharDev { major: u32, minor: u32, mode: u32 },
}

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Paths inside the image, relative (no leading `/`), sorted so a directory
/// always comes before what it contains.
#[derive(Default)]
pub struct Image {
    entries: BTreeMap<PathBuf, Entry>,
}

/// `/usr/bin/x` -> `usr/bin/x`; `..` and `.` are refused so nothing escapes.
fn rel(path: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(p) => out.push(p),
            _ => bail!("image path {} is not a plain absolute path", path.display()),
        }
    }
    if out.as_os_str().is_empty() {
        bail!("empty image path");
    }
    Ok(out)
}

impl Image {
    pub fn dir(&mut self, path: &str) -> Result<()> {
        self.entries
            .insert(rel(Path::new(path))?, Entry::Dir { mode: 0o755 });
        Ok(())
    }

    pub fn bytes(&mut self, path: &str, data: impl Into<Vec<u8>>, mode: u32) -> Result<()> {
        let data = data.into();
        self.entries
            .insert(rel(Path::new(path))?, Entry::Bytes { data, mode });
        Ok(())
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.entries.insert(
            rel(Path::new(path))?,
            Entry::Symlink {
                target: target.into(),
            },
        );
        Ok(())
    }

    pub fn char_dev(&mut self, path: &str, major: u32, minor: u32) -> Result<()> {
        self.entries.insert(
            rel(Path::new(path))?,
            Entry::CharDev {
                major,
                minor,
                mode: 0o600,
            },
        );
        Ok(())
    }

    /// A host file placed at `dest` (content copied, symlinks followed).
    pub fn file_at(&mut self, dest: &Path, src: &Path) -> Result<()> {
        let meta = fs::metadata(src).with_context(|| format!("reading {}", src.display()))?;
        let mode = meta.permissions().mode() & 0o7777;
        self.entries.insert(
            rel(dest)?,
            Entry::File {
                src: src.to_path_buf(),
                mode,
            },
        );
        Ok(())
    }

    /// A host path at the same place in the image, with every symlink met on
    /// the way (`/lib64`, `/usr/bin/python3`, ...) recreated, so the dynamic
    /// loader and libraries are found exactly where the binaries expect them.
    pub fn host_path(&mut self, path: &Path) -> Result<()> {
        self.host_path_depth(path, 0)
    }

    fn host_path_depth(&mut self, path: &Path, depth: u32) -> Result<()> {
        if depth > 40 {
            bail!("too many symlinks resolving {}", path.display());
        }
        if !path.is_absolute() {
            bail!("{} is not absolute", path.display());
        }
        // The first component (ancestor or the path itself) that is a symlink.
        let mut cur = PathBuf::from("/");
        let comps: Vec<_> = path.components().skip(1).collect();
        for (i, c) in comps.iter().enumerate() {
            cur.push(c);
            let meta = fs::symlink_metadata(&cur)
                .with_context(|| format!("{} does not exist", cur.display()))?;
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&cur)?;
                let parent = cur.parent().unwrap_or(Path::new("/")).to_path_buf();
                self.entries.insert(
                    rel(&cur)?,
                    Entry::Symlink {
                        target: target.clone(),
                    },
                );
                let mut resolved = normalize(&parent.join(target));
                for rest in &comps[i + 1..] {
                    resolved.push(rest);
                }
                return self.host_path_depth(&resolved, depth + 1);
            }
        }
        let meta = fs::metadata(path)?;
        if meta.is_dir() {
            self.entries.insert(
                rel(path)?,
                Entry::Dir {
                    mode: meta.mode() & 0o7777,
                },
            );
            Ok(())
        } else {
            self.file_at(path, path)
        }
    }

    /// A host file plus the shared libraries it needs (by `ldd`).
    pub fn host_binary(&mut self, path: &Path) -> Result<()> {
        self.host_path(path)?;
        for lib in shared_libs(path)? {
            self.host_path(&lib)?;
        }
        Ok(())
    }

    /// A host directory tree, skipping entries for which `skip` says so;
    /// shared objects in it get their libraries too.
    pub fn host_tree(&mut self, root: &Path, skip: &dyn Fn(&Path) -> bool) -> Result<()> {
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            self.host_path(&dir)?;
            let mut names: Vec<_> = fs::read_dir(&dir)
                .with_context(|| format!("listing {}", dir.display()))?
                .collect::<io::Result<_>>()?;
            names.sort_by_key(fs::DirEntry::file_name);
            for e in names {
                let p = e.path();
                if skip(&p) {
                    continue;
                }
                let ft = e.file_type()?;
                if ft.is_dir() {
                    stack.push(p);
                } else if ft.is_symlink() {
                    let target = fs::read_link(&p)?;
                    self.entries.insert(rel(&p)?, Entry::Symlink { target });
                } else if p.extension().is_some_and(|x| x == "so") {
                    self.host_binary(&p)?;
                } else {
                    self.file_at(&p, &p)?;
                }
            }
        }
        Ok(())
    }

    pub fn contains(&self, path: &str) -> bool {
        rel(Path::new(path)).is_ok_and(|p| self.entries.contains_key(&p))
    }

    /// Writes the archive; returns its size in bytes.
    pub fn write_cpio(&self, out: &Path) -> Result<u64> {
        let tmp = out.with_extension("tmp");
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut w = CpioWriter {
            out: BufWriter::new(file),
            pos: 0,
            ino: 1,
        };
        // Parents the entries did not list explicitly.
        let mut all = self.entries.clone();
        for p in self.entries.keys() {
            for a in p.ancestors().skip(1) {
                if !a.as_os_str().is_empty() {
                    all.entry(a.to_path_buf())
                        .or_insert(Entry::Dir { mode: 0o755 });
                }
            }
        }
        for (path, entry) in &all {
            let name = path
                .to_str()
                .with_context(|| format!("{} is not UTF-8", path.display()))?;
            match entry {
                Entry::Dir { mode } => w.header(name, S_IFDIR | mode, 0, (0, 0))?,
                Entry::Bytes { data, mode } => {
                    w.header(name, S_IFREG | mode, data.len() as u64, (0, 0))?;
                    w.data(&mut &data[..], data.len() as u64)?;
                }
                Entry::File { src, mode } => {
                    let mut f =
                        File::open(src).with_context(|| format!("opening {}", src.display()))?;
                    let len = f.metadata()?.len();
                    w.header(name, S_IFREG | mode, len, (0, 0))?;
                    w.data(&mut f, len)
                        .with_context(|| format!("copying {}", src.display()))?;
                }
                Entry::Symlink { target } => {
                    let t = target.as_os_str().as_encoded_bytes();
                    w.header(name, S_IFLNK | 0o777, t.len() as u64, (0, 0))?;
                    w.data(&mut &t[..], t.len() as u64)?;
                }
                Entry::CharDev { major, minor, mode } => {
                    w.header(name, S_IFCHR | mode, 0, (*major, *minor))?;
                }
            }
        }
        w.header("TRAILER!!!", 0, 0, (0, 0))?;
        w.out.flush()?;
        drop(w);
        fs::rename(&tmp, out)?;
        Ok(fs::metadata(out)?.len())
    }
}

struct CpioWriter {
    out: BufWriter<File>,
    pos: u64,
    ino: u32,
}

impl CpioWriter {
    fn header(&mut self, name: &str, mode: u32, size: u64, rdev: (u32, u32)) -> Result<()> {
        let size = u32::try_from(size).context("file too large for a newc cpio archive")?;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            nlink,
            0,
            size,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        let mut h = String::from("070701");
        for f in fields {
            h.push_str(&format!("{f:08x}"));
        }
        self.write(h.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad()
    }

    fn data(&mut self, src: &mut dyn Read, len: u64) -> Result<()> {
        let copied = io::copy(&mut src.take(len), &mut self.out)?;
        if copied != len {
            bail!("file changed size while archiving");
        }
        self.pos += copied;
        self.pad()
    }

    fn write(&mut self, b: &[u8]) -> Result<()> {
        self.out.write_all(b)?;
        self.pos += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<()> {
        let n = (4 - self.pos % 4) % 4;
        self.write(&[0u8; 3][..n as usize])
    }
}

/// Lexical `..` removal (the path need not exist in the image).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(x) => out.push(x),
            _ => {}
        }
    }
    out
}

/// Libraries (and the ELF interpreter) `ldd` lists for a binary; none for a
/// static one.
fn shared_libs(path: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(path)
        .output()
        .context("running ldd (libc-bin)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("statically linked") {
        // ldd exits 1 for "not a dynamic executable": nothing to add.
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let candidate = match line.split_once("=>") {
            Some((_, rhs)) => rhs.trim(),
            None => line,
        };
        if candidate.starts_with("not found") {
            bail!("{}: a shared library is missing: {line}", path.display());
        }
        match candidate.split_whitespace().next() {
            Some(p) if p.starts_with('/') => libs.push(PathBuf::from(p)),
            _ => {}
        }
    }
    Ok(libs)
}

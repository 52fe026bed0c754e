//! The mounted cgroup hierarchies, from `/proc/self/mountinfo`.

use std::path::{Path, PathBuf};

use crate::Error;

/// Where the kernel lists the calling process's mounts (proc(5)).
pub const MOUNTINFO: &str = "/proc/self/mountinfo";

/// Where the kernel lists the calling process's cgroups (cgroups(7)).
pub const OWN_CGROUP: &str = "/proc/self/cgroup";

/// Super-block options of a v1 mount that are neither controllers nor a
/// hierarchy's name.
const V1_NON_CONTROLLER_OPTIONS: &[&str] = &[
    "rw",
    "ro",
    "noprefix",
    "clone_children",
    "xattr",
    "cpuset_v2_mode",
    "favordynmods",
];

/// A cgroup hierarchy version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Legacy hierarchies, one or more controllers each.
    V1,
    /// The unified hierarchy.
    V2,
}

/// One mounted hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Its mount point.
    pub mount: PathBuf,
    /// v1: its controllers and `name=` option, as mounted (`cpu,cpuacct`);
    /// empty for v2.
    pub controllers: Vec<String>,
    /// Whether it is the unified (v2) hierarchy.
    pub v2: bool,
}

impl Hierarchy {
    /// Whether this v1 hierarchy holds `controller`.
    pub fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }

    /// Whether this is a v1 hierarchy with a name and no controller
    /// (`name=systemd`).
    pub fn is_named_only(&self) -> bool {
        !self.v2 && self.controllers.iter().all(|c| c.starts_with("name="))
    }

    /// The directory of cgroup `path` (absolute or not: always below the
    /// hierarchy's root) in this hierarchy.
    pub fn dir(&self, path: &Path) -> PathBuf {
        self.mount.join(path.strip_prefix("/").unwrap_or(path))
    }

    /// The cgroup of this process in this hierarchy, from the text of
    /// [`OWN_CGROUP`] (`ID:CONTROLLERS:PATH`; v2 is `0::PATH`); `/` when
    /// it is not listed.
    pub fn own_cgroup(&self, own: &str) -> PathBuf {
        let mut wanted = self.controllers.clone();
        wanted.sort();
        for line in own.lines() {
            let mut f = line.splitn(3, ':');
            let (Some(_), Some(list), Some(path)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let mut listed: Vec<&str> = list.split(',').filter(|c| !c.is_empty()).collect();
            listed.sort_unstable();
            if listed == wanted {
                return PathBuf::from(path);
            }
        }
        PathBuf::from("/")
    }
}

/// The cgroup hierarchies mounted in this process's mount namespace, in
/// mountinfo order; one per set of controllers (a later mount of the same
/// one is usually a bind), and the first v2 mount.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Mounts {
    /// The hierarchies.
    pub hierarchies: Vec<Hierarchy>,
}

impl Mounts {
    /// Reads [`MOUNTINFO`].
    pub fn read() -> Result<Mounts, Error> {
        let text = std::fs::read_to_string(MOUNTINFO).map_err(Error::io("read", MOUNTINFO))?;
        Ok(Mounts::parse(&text))
    }

    /// Parses mountinfo lines (proc(5)): the mount point is field 5
    /// (octal-escaped); after the ` - ` separator come the fs type, the
    /// source and the super-block options (for v1, the controllers).
    pub fn parse(mountinfo: &str) -> Mounts {
        let mut out: Vec<Hierarchy> = Vec::new();
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mount) = left.split(' ').nth(4) else {
                continue;
            };
            let mount = PathBuf::from(unescape_octal(mount));
            let mut right = right.split(' ');
            match right.next() {
                Some("cgroup2") if !out.iter().any(|h| h.v2) => out.push(Hierarchy {
                    mount,
                    controllers: Vec::new(),
                    v2: true,
                }),
                Some("cgroup") => {
                    let controllers: Vec<String> = right
                        .nth(1)
                        .unwrap_or_default()
                        .split(',')
                        .filter(|o| {
                            o.starts_with("name=")
                                || !(o.contains('=') || V1_NON_CONTROLLER_OPTIONS.contains(o))
                        })
                        .map(str::to_owned)
                        .collect();
                    if !controllers.is_empty() && !out.iter().any(|h| h.controllers == controllers)
                    {
                        out.push(Hierarchy {
                            mount,
                            controllers,
                            v2: false,
                        });
                    }
                }
                _ => {}
            }
        }
        Mounts { hierarchies: out }
    }

    /// The version in use: v2 when the unified hierarchy is mounted at
    /// `/sys/fs/cgroup` or no v1 controller is mounted; v1 when any v1
    /// controller is mounted (also on hybrid hosts); `None` when no
    /// hierarchy is.
    pub fn version(&self) -> Option<Version> {
        match (self.v2(), self.v1().next().is_some()) {
            (Some(h), _) if h.mount == Path::new("/sys/fs/cgroup") => Some(Version::V2),
            (_, true) => Some(Version::V1),
            (Some(_), false) => Some(Version::V2),
            (None, false) => None,
        }
    }

    /// The unified hierarchy.
    pub fn v2(&self) -> Option<&Hierarchy> {
        self.hierarchies.iter().find(|h| h.v2)
    }

    /// The v1 hierarchies that hold controllers (not the named-only ones).
    pub fn v1(&self) -> impl Iterator<Item = &Hierarchy> {
        self.hierarchies
            .iter()
            .filter(|h| !h.v2 && !h.is_named_only())
    }

    /// The v1 hierarchy holding `controller`.
    pub fn v1_with(&self, controller: &str) -> Option<&Hierarchy> {
        self.v1().find(|h| h.has(controller))
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::{HYBRID, UNIFIED};

    #[test]
    fn hybrid_host_is_v1_with_every_hierarchy_listed_once() {
        let m = Mounts::parse(HYBRID);
        let mounts: Vec<_> = m.hierarchies.iter().map(|h| h.mount.clone()).collect();
        assert_eq!(
            mounts,
            [
                "/sys/fs/cgroup/unified",
                "/sys/fs/cgroup/systemd",
                "/sys/fs/cgroup/cpu,cpuacct",
                "/sys/fs/cgroup/memory",
                "/sys/fs/cgroup/pids",
                "/sys/fs/cgroup/cpuset",
            ]
            .map(PathBuf::from)
        );
        assert_eq!(m.hierarchies[1].controllers, ["name=systemd"]);
        assert!(m.hierarchies[1].is_named_only());
        assert_eq!(m.hierarchies[2].controllers, ["cpu", "cpuacct"]);
        assert_eq!(
            m.v1_with("cpuacct").map(|h| h.mount.as_path()),
            Some(Path::new("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(m.v1_with("systemd"), None);
        assert_eq!(m.v1_with("devices"), None);
        assert_eq!(m.v1().count(), 4);
        assert_eq!(m.version(), Some(Version::V1));
    }

    #[test]
    fn unified_host_is_v2() {
        let m = Mounts::parse(UNIFIED);
        assert_eq!(m.version(), Some(Version::V2));
        assert_eq!(m.v2().unwrap().mount, Path::new("/sys/fs/cgroup"));
        assert_eq!(Mounts::parse("").version(), None);
        // Only a named v1 hierarchy beside a v2 one elsewhere: v2.
        let named = "32 30 0:28 / /n rw - cgroup cgroup rw,name=x\n\
                     31 30 0:27 / /u rw - cgroup2 cgroup2 rw\n";
        assert_eq!(Mounts::parse(named).version(), Some(Version::V2));
    }

    #[test]
    fn cgroup_dirs_and_own_cgroup() {
        let m = Mounts::parse(HYBRID);
        let memory = &m.hierarchies[3];
        assert_eq!(
            memory.dir(Path::new("/a/b")),
            Path::new("/sys/fs/cgroup/memory/a/b")
        );
        assert_eq!(
            memory.dir(Path::new("a")),
            Path::new("/sys/fs/cgroup/memory/a")
        );
        let own = "4:memory:/process_api/x\n9:name=systemd:/\n3:cpuacct,cpu:/c\n0::/u\n";
        assert_eq!(memory.own_cgroup(own), Path::new("/process_api/x"));
        assert_eq!(m.hierarchies[2].own_cgroup(own), Path::new("/c"));
        assert_eq!(m.hierarchies[0].own_cgroup(own), Path::new("/u"));
        assert_eq!(m.hierarchies[4].own_cgroup(own), Path::new("/"));
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_octal(r"/a\040b"), "/a b");
        assert_eq!(unescape_octal(r"/a\\"), r"/a\\");
    }
}

//! The typed hand-off between `create` and the VMM process: what `create`
//! writes for it ([`VmmInputs`], one file) and what it reports back once
//! the container is created ([`VmmReady`], on the readiness pipe of
//! [`super::super::spawn`]). Each is written and read through the same
//! type by the same build of capsa.

use std::path::Path;

use capsa_agent::protocol::{CreateParams, ProcessId};
use serde::{Deserialize, Serialize};

use crate::config::VmConfig;
use crate::runtime::{state, Result, RuntimeError};

/// Name of the inputs file in the VMM's directory (`/` of its jail, or
/// the state directory when unjailed).
pub const INPUTS_FILE: &str = "vmm-inputs.json";

/// Everything the VMM process needs, decided by `create`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmmInputs {
    /// The machine, complete and validated by `create`, with paths as the
    /// VMM sees them (inside its jail). It has a vsock device: the agent's
    /// only channel.
    pub vm: VmConfig,
    /// The agent's `create`: the container's rootfs, mounts, hostname and
    /// process.
    pub container: CreateParams,
    /// With `--console-socket` and a terminal: the descriptor number of
    /// the pty slave the VMM process inherits (`create` opens the pty and
    /// sends the master to the engine, as the jailed VMM can reach neither
    /// `/dev/pts` nor the socket).
    #[serde(default)]
    pub console_fd: Option<i32>,
}

/// What the VMM process reports once the agent created the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VmmReady {
    /// The agent's id of the container's init process (for `kill`).
    pub init_process_id: ProcessId,
}

impl VmmInputs {
    /// Writes the inputs into `dir` (atomically).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| RuntimeError::Failed(format!("cannot encode the VMM's inputs: {e}")))?;
        state::write_atomic(&dir.join(INPUTS_FILE), &text)
    }

    /// Reads the inputs from `dir`; the error names the file and the field.
    pub fn read(dir: &Path) -> std::result::Result<VmmInputs, String> {
        let path = dir.join(INPUTS_FILE);
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let de = &mut serde_json::Deserializer::from_str(&text);
        serde_path_to_error::deserialize(de)
            .map_err(|e| format!("{}: {}: {}", path.display(), e.path(), e.inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capsa_agent::protocol::{ProcessSpec, RootfsSpec, RootfsType};

    #[test]
    fn inputs_round_trip_through_their_file() {
        let dir = tempfile::tempdir().unwrap();
        let inputs = VmmInputs {
            vm: VmConfig::new("/vmlinux"),
            container: CreateParams {
                container_id: "c".into(),
                rootfs: RootfsSpec {
                    source: Some("/dev/vda".into()),
                    fstype: RootfsType::Ext4,
                    readonly: true,
                    tag: None,
                },
                process: ProcessSpec {
                    args: vec!["sh".into()],
                    ..Default::default()
                },
                hostname: None,
                shares: Vec::new(),
                mounts: Vec::new(),
                stdin: true,
                pid_namespace: true,
                network: None,
                sysctl: Default::default(),
            },
            console_fd: Some(5),
        };
        inputs.write(dir.path()).unwrap();
        assert_eq!(VmmInputs::read(dir.path()).unwrap(), inputs);
        std::fs::write(dir.path().join(INPUTS_FILE), r#"{"vm":{"kernel":"/k"}}"#).unwrap();
        let e = VmmInputs::read(dir.path()).unwrap_err();
        assert!(e.contains("container"), "{e}");
    }
}

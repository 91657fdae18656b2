//! `[docker.templates.<name>]`: ready-made creates a request names by `template`
//! (container-runtime), with their checks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::Issues;
use super::values::{ByteSize, is_mount_path, is_plain_name};
use crate::exec_env::is_variable_name;

/// One template: what a create that names it gets where the request leaves a field empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Template {
    /// The image, as `CreateContainerRequest.image` (on `[docker.registry] allowed_registries`).
    pub image: String,
    /// The command, when the request gives neither a command nor arguments.
    pub command: Vec<String>,
    /// Environment variables; the request's are added, and win on the same name.
    pub env: BTreeMap<String, String>,
    /// Container ports published when the request asks for none: `"8888"`, `"6006/udp"`.
    pub ports: Vec<String>,
    /// `/dev/shm` size, bytes, when the request does not ask; 0: `[docker.workload]
    /// shm_fraction` of the container's memory.
    pub shm_bytes: ByteSize,
    /// Where volumes go: the request's `volumes[i]` without a `container_path` is mounted at
    /// `volume_paths[i]`.
    pub volume_paths: Vec<String>,
}

impl Default for Template {
    fn default() -> Self {
        Self {
            image: String::new(),
            command: Vec::new(),
            env: BTreeMap::new(),
            ports: Vec::new(),
            shm_bytes: ByteSize::new(0),
            volume_paths: Vec::new(),
        }
    }
}

/// A template port: `8888` or `8888/tcp`, `6006/udp`; (port, udp).
pub fn parse_port(text: &str) -> Result<(u16, bool), String> {
    let (port, protocol) = text.split_once('/').unwrap_or((text, "tcp"));
    let udp = match protocol {
        "tcp" => false,
        "udp" => true,
        _ => return Err(format!("`{text}`: the protocol is tcp or udp")),
    };
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok((port, udp)),
        _ => Err(format!("`{text}` is not a port (1 to 65535, then /tcp or /udp)")),
    }
}

pub(super) fn validate(templates: &BTreeMap<String, Template>, v: &mut Issues) {
    for (name, t) in templates {
        let key = |field: &str| format!("docker.templates.{name}.{field}");
        if !is_plain_name(name) {
            v.fail(
                &format!("docker.templates.{name}"),
                "a template name has letters, digits, `_`, `.` and `-`, starts with a letter or digit, at most 64",
            );
        }
        if t.image.trim().is_empty() || t.image.chars().any(char::is_whitespace) {
            v.fail(&key("image"), format!("`{}` is not an image reference", t.image));
        }
        for (i, port) in t.ports.iter().enumerate() {
            if let Err(e) = parse_port(port) {
                v.fail(&format!("{}[{i}]", key("ports")), e);
            } else if t.ports[..i].iter().any(|p| parse_port(p) == parse_port(port)) {
                v.fail(&format!("{}[{i}]", key("ports")), format!("`{port}` is listed twice"));
            }
        }
        for (i, path) in t.volume_paths.iter().enumerate() {
            if !is_mount_path(path) {
                v.fail(
                    &format!("{}[{i}]", key("volume_paths")),
                    format!("`{path}` is not an absolute path below / (without `..`, `,` or `:`)"),
                );
            } else if t.volume_paths[..i].contains(path) {
                v.fail(&format!("{}[{i}]", key("volume_paths")), format!("`{path}` is listed twice"));
            }
        }
        for variable in t.env.keys() {
            if !is_variable_name(variable) {
                v.fail(&key("env"), format!("`{variable}` is not a variable name"));
            } else if variable.to_ascii_uppercase().starts_with("NVIDIA_") {
                v.fail(&key("env"), format!("`{variable}`: NVIDIA_ variables are the executor's to set"));
            }
        }
    }
}

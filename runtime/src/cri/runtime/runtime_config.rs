//! `RuntimeConfig`: settings kubelet must agree with.

use tonic::Status;
use vmpod_cri_api::v1::{
    CgroupDriver as CriCgroupDriver, LinuxRuntimeConfiguration, RuntimeConfigRequest,
    RuntimeConfigResponse,
};

use crate::config::CgroupDriver;
use crate::daemon::Daemon;

pub fn runtime_config(
    daemon: &Daemon,
    _req: RuntimeConfigRequest,
) -> Result<RuntimeConfigResponse, Status> {
    let driver = match daemon.config.cgroup_driver {
        CgroupDriver::Systemd => CriCgroupDriver::Systemd,
        CgroupDriver::Cgroupfs => CriCgroupDriver::Cgroupfs,
    };
    Ok(RuntimeConfigResponse {
        linux: Some(LinuxRuntimeConfiguration {
            cgroup_driver: driver.into(),
        }),
    })
}

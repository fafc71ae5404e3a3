//! The node-driver-registrar role: serves the kubelet plugin registration API on
//! `<registration dir>/<driver>-reg.sock`, telling the kubelet where the CSI endpoint is.

use tonic::{Request, Response, Status};
use tug_csi::registration::registration_server::Registration;
use tug_csi::registration::{InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse};

pub struct Registrar {
    pub driver_name: String,
    /// The CSI socket path as the kubelet sees it (--kubelet-registration-path).
    pub endpoint: String,
}

#[tonic::async_trait]
impl Registration for Registrar {
    async fn get_info(&self, _request: Request<InfoRequest>) -> Result<Response<PluginInfo>, Status> {
        Ok(Response::new(PluginInfo {
            r#type: "CSIPlugin".to_string(),
            name: self.driver_name.clone(),
            endpoint: self.endpoint.clone(),
            supported_versions: vec!["1.0.0".to_string()],
        }))
    }

    async fn notify_registration_status(
        &self,
        request: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        if status.plugin_registered {
            tracing::info!(driver = %self.driver_name, "registered with the kubelet");
        } else {
            tracing::error!(driver = %self.driver_name, error = %status.error, "kubelet failed to register the plugin");
        }
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}

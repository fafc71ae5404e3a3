//! [`ImageService`] over CRI v1's `runtime.v1.ImageService`.

use async_trait::async_trait;

use super::{RemoteRuntime, convert, request, v1};
use crate::image::Credentials;
use crate::{Image, ImageService, ImageServiceError};

fn rpc_error(operation: &'static str, status: tonic::Status) -> ImageServiceError {
    ImageServiceError::Rpc { operation, source: Box::new(status) }
}

/// Our credentials as the CRI's `AuthConfig`. The server address is left empty: the kubelet has
/// already chosen these credentials for the image's registry, and containerd applies an
/// `AuthConfig` without one to the registry it pulls from.
fn auth_config(credentials: &Credentials) -> v1::AuthConfig {
    match credentials {
        Credentials::Basic { username, password } => {
            v1::AuthConfig { username: username.clone(), password: password.clone(), ..Default::default() }
        }
        Credentials::Bearer { token } => v1::AuthConfig { registry_token: token.clone(), ..Default::default() },
    }
}

#[async_trait]
impl ImageService for RemoteRuntime {
    async fn pull_image(&self, image: &str, credentials: &[Credentials]) -> Result<Image, ImageServiceError> {
        // As the kubelet: each candidate in turn, anonymously when there is none; the last
        // failure is the one reported.
        let auths: Vec<Option<v1::AuthConfig>> = if credentials.is_empty() {
            vec![None]
        } else {
            credentials.iter().map(|c| Some(auth_config(c))).collect()
        };
        let mut last_error = None;
        for auth in auths {
            // No deadline: a large image takes what it takes (the kubelet's pulls neither).
            let message = v1::PullImageRequest { image: Some(convert::image_spec(image)), auth, sandbox_config: None };
            match self.images.clone().pull_image(tonic::Request::new(message)).await {
                Ok(response) => {
                    let image_ref = response.into_inner().image_ref;
                    let pulled = self.image_status(&image_ref).await?;
                    return pulled.ok_or_else(|| {
                        rpc_error("ImageStatus", tonic::Status::not_found(format!("pulled image {image_ref} is gone")))
                    });
                }
                Err(status) => last_error = Some(rpc_error("PullImage", status)),
            }
        }
        Err(last_error.unwrap_or_else(|| rpc_error("PullImage", tonic::Status::internal("no attempt made"))))
    }

    async fn list_images(&self) -> Result<Vec<Image>, ImageServiceError> {
        let response = self.images.clone().list_images(request(v1::ListImagesRequest { filter: None })).await;
        let images = response.map_err(|s| rpc_error("ListImages", s))?.into_inner().images;
        Ok(images.into_iter().map(convert::image_from).collect())
    }

    async fn image_status(&self, image: &str) -> Result<Option<Image>, ImageServiceError> {
        let message = v1::ImageStatusRequest { image: Some(convert::image_spec(image)), verbose: false };
        match self.images.clone().image_status(request(message)).await {
            Ok(response) => Ok(response.into_inner().image.map(convert::image_from)),
            // The CRI answers an absent image with an empty response; some runtimes say NotFound.
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(rpc_error("ImageStatus", status)),
        }
    }

    async fn remove_image(&self, image: &str) -> Result<(), ImageServiceError> {
        let message = v1::RemoveImageRequest { image: Some(convert::image_spec(image)) };
        match self.images.clone().remove_image(request(message)).await {
            Err(status) if status.code() != tonic::Code::NotFound => Err(rpc_error("RemoveImage", status)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_become_auth_configs() {
        let basic = auth_config(&Credentials::basic("u", "p"));
        assert_eq!((basic.username.as_str(), basic.password.as_str()), ("u", "p"));
        let bearer = auth_config(&Credentials::Bearer { token: "t".into() });
        assert_eq!(bearer.registry_token, "t");
        assert!(bearer.username.is_empty() && bearer.server_address.is_empty());
    }
}

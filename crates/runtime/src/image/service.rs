//! The built-in runtime's [`ImageService`](crate::ImageService): the store plus the puller.

use std::collections::BTreeMap;

use super::auth::Credentials;
use super::pull::{PullError, Puller};
use super::reference;
use super::store::{ImageRecord, ImageStore};
use crate::{Image, ImageService, ImageServiceError};

/// Images kept in an [`ImageStore`] and pulled by a [`Puller`].
#[derive(Debug, Clone)]
pub struct BuiltinImageService {
    store: ImageStore,
    puller: Puller,
}

impl BuiltinImageService {
    pub fn new(store: ImageStore, puller: Puller) -> Self {
        BuiltinImageService { store, puller }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(ImageStore) -> Result<T, ImageServiceError> + Send + 'static,
    ) -> Result<T, ImageServiceError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || work(store)).await?
    }
}

/// Whether a store entry is the image `wanted` names: a reference (normalised as the store keeps
/// names) or an image ID (`sha256:<hex>`, or a prefix of at least 12 hex digits).
pub fn names_image(wanted: &str) -> impl Fn(&str, &ImageRecord) -> bool {
    let wanted_name = reference::parse(wanted).ok().map(|r| reference::normalized_name(&r));
    let wanted_id = Some(wanted.strip_prefix("sha256:").unwrap_or(wanted))
        .filter(|id| id.len() >= 12 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .map(str::to_owned);
    move |name, record| {
        wanted_name.as_deref() == Some(name)
            || wanted_id.as_deref().is_some_and(|id| record.config.hex().starts_with(id))
    }
}

/// Groups the store's names into images by image ID. `wanted` (see [`names_image`]) keeps only
/// the image it names.
fn images(records: Vec<(String, ImageRecord)>, wanted: Option<&str>) -> Vec<Image> {
    let selected_ids: Option<Vec<String>> = wanted.map(|wanted| {
        let matches = names_image(wanted);
        records
            .iter()
            .filter(|(name, record)| matches(name, record))
            .map(|(_, record)| record.config.to_string())
            .collect()
    });
    let mut by_id: BTreeMap<String, Image> = BTreeMap::new();
    for (name, record) in records {
        let id = record.config.to_string();
        if selected_ids.as_ref().is_some_and(|ids| !ids.contains(&id)) {
            continue;
        }
        let image = by_id.entry(id.clone()).or_insert_with(|| Image {
            id,
            repo_tags: Vec::new(),
            repo_digests: Vec::new(),
            size: record.size,
            user: None,
        });
        let repo = name.split_once('@').map_or_else(
            || name.rsplit_once(':').map_or(name.as_str(), |(repo, _)| repo).to_owned(),
            |(repo, _)| repo.to_owned(),
        );
        if !name.contains('@') {
            image.repo_tags.push(name.clone());
        }
        let repo_digest = format!("{repo}@{}", record.repo_digest);
        if !image.repo_digests.contains(&repo_digest) {
            image.repo_digests.push(repo_digest);
        }
    }
    by_id.into_values().collect()
}

#[async_trait::async_trait]
impl ImageService for BuiltinImageService {
    async fn pull_image(&self, image: &str, credentials: &[Credentials]) -> Result<Image, ImageServiceError> {
        let attempts: Vec<Option<&Credentials>> =
            if credentials.is_empty() { vec![None] } else { credentials.iter().map(Some).collect() };
        let mut last_error = None;
        for attempt in attempts {
            match self.puller.pull(image, attempt).await {
                Ok(pulled) => {
                    let name = pulled.name.clone();
                    return self
                        .image_status(&name)
                        .await?
                        .ok_or(ImageServiceError::Store(super::StoreError::NotFound { name }));
                }
                // Another credential may be the right one.
                Err(e @ PullError::Unauthorized { .. }) => last_error = Some(e),
                Err(e) => return Err(e.into()),
            }
        }
        Err(last_error.map_or_else(
            || ImageServiceError::Store(super::StoreError::NotFound { name: image.to_owned() }),
            Into::into,
        ))
    }

    async fn list_images(&self) -> Result<Vec<Image>, ImageServiceError> {
        self.blocking(|store| Ok(images(store.list()?, None))).await
    }

    async fn image_status(&self, image: &str) -> Result<Option<Image>, ImageServiceError> {
        let wanted = image.to_owned();
        self.blocking(move |store| {
            let records = store.list()?;
            let Some(mut found) = images(records.clone(), Some(&wanted)).into_iter().next() else { return Ok(None) };
            if let Some((_, record)) = records.iter().find(|(_, r)| r.config.to_string() == found.id) {
                let config = store.image_config(record)?;
                found.user = config.config().as_ref().and_then(|c| c.user().clone()).filter(|u| !u.is_empty());
            }
            Ok(Some(found))
        })
        .await
    }

    async fn remove_image(&self, image: &str) -> Result<(), ImageServiceError> {
        let wanted = image.to_owned();
        self.blocking(move |store| {
            let records = store.list()?;
            let ids: Vec<String> = images(records.clone(), Some(&wanted)).into_iter().map(|i| i.id).collect();
            for (name, record) in records {
                if ids.contains(&record.config.to_string()) {
                    store.remove(&name)?;
                }
            }
            store.gc()?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::digest::Digest;
    use crate::image::pull::PullOptions;
    use crate::image::testing::TestImage;

    fn service_with(image: &TestImage, names: &[&str]) -> (tempfile::TempDir, BuiltinImageService) {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        for blob in image.blobs() {
            store.write_blob(None, blob).unwrap();
        }
        for name in names {
            store.register(name, &image.manifest_digest(), &image.manifest_digest()).unwrap();
        }
        let puller = Puller::new(store.clone(), PullOptions::default());
        (dir, BuiltinImageService::new(store, puller))
    }

    #[tokio::test]
    async fn names_of_one_image_are_grouped_and_found_by_name_or_id() {
        let image = TestImage::new(&[("a", "b")], &["sh"]);
        let digest = image.manifest_digest();
        let pinned = format!("example.test/app@{digest}");
        let (_dir, service) = service_with(&image, &["example.test/app:1", "example.test/app:latest", pinned.as_str()]);
        let listed = service.list_images().await.unwrap();
        assert_eq!(listed.len(), 1);
        let expected = Image {
            id: Digest::of(&image.config).to_string(),
            repo_tags: vec!["example.test/app:1".into(), "example.test/app:latest".into()],
            repo_digests: vec![pinned.clone()],
            size: listed[0].size,
            user: None,
        };
        assert_eq!(listed[0], expected);
        // The status also reads the image's configured user; the listing does not.
        let with_user = Image { user: Some("1000:1000".into()), ..expected.clone() };
        assert_eq!(service.image_status("example.test/app").await.unwrap(), Some(with_user.clone()));
        assert_eq!(service.image_status(&expected.id[7..19]).await.unwrap(), Some(with_user));
        assert_eq!(service.image_status("example.test/other").await.unwrap(), None);
    }

    #[tokio::test]
    async fn remove_image_drops_every_name_and_the_content() {
        let image = TestImage::new(&[("a", "b")], &["sh"]);
        let (dir, service) = service_with(&image, &["example.test/app:1", "example.test/app:2"]);
        service.remove_image("example.test/app:1").await.unwrap();
        assert!(service.list_images().await.unwrap().is_empty());
        assert!(!ImageStore::open(dir.path()).unwrap().has_blob(&Digest::of(&image.layer)));
        service.remove_image("example.test/app:1").await.unwrap();
    }
}

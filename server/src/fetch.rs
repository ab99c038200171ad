//! Media URLs resolved to bytes, on worker threads: `data:` URLs (base64), local files only under
//! `--allowed-local-media-path` (vLLM's rule: sglang reads any path, which lets any client read the server's
//! files), and http(s) with connect/read timeouts, a size cap enforced while reading, and few redirects.
use std::{
    io::Read,
    path::{Path, PathBuf},
    time::Duration,
};

use base64::Engine as _;

use crate::openai::{request::MediaPart, ApiError};

#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Local files are served only from under this directory (canonicalised).
    pub allowed_local_path: Option<PathBuf>,
    /// Largest media item, encoded.
    pub max_bytes: usize,
    /// The whole http(s) fetch must finish within this.
    pub timeout: Duration,
    pub max_redirects: u32,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            allowed_local_path: None,
            max_bytes: 64 * 1024 * 1024,
            timeout: Duration::from_secs(10),
            max_redirects: 3,
        }
    }
}

pub struct Fetcher {
    opts: FetchOptions,
    agent: ureq::Agent,
}

fn too_large(part: &MediaPart, max: usize) -> ApiError {
    ApiError::new(413, format!("{}: the media is larger than the limit of {max} bytes", part.param))
        .with_param(&part.param)
}

impl Fetcher {
    pub fn new(opts: FetchOptions) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(opts.timeout))
            .timeout_connect(Some(opts.timeout.min(Duration::from_secs(5))))
            .max_redirects(opts.max_redirects)
            .http_status_as_error(true)
            .build()
            .into();
        Fetcher { opts, agent }
    }

    /// The bytes behind a part's URL.
    pub fn fetch(&self, part: &MediaPart) -> Result<Vec<u8>, ApiError> {
        let url = part.url.trim();
        let bad = |msg: String| ApiError::bad_request(format!("{}: {msg}", part.param)).with_param(&part.param);
        if let Some(rest) = url.strip_prefix("data:") {
            let Some((meta, payload)) = rest.split_once(',') else {
                return Err(bad("a data: URL needs a comma before its payload".into()));
            };
            if !meta.ends_with(";base64") {
                return Err(bad("only base64 data: URLs are supported".into()));
            }
            if payload.len() / 4 * 3 > self.opts.max_bytes {
                return Err(too_large(part, self.opts.max_bytes));
            }
            return base64::engine::general_purpose::STANDARD
                .decode(payload.trim())
                .map_err(|e| bad(format!("invalid base64 in the data: URL ({e})")));
        }
        if url.starts_with("http://") || url.starts_with("https://") {
            return self.fetch_http(url, part);
        }
        let path = url.strip_prefix("file://").unwrap_or(url);
        if url.starts_with("file://") || path.starts_with('/') {
            return self.read_local(Path::new(path), part);
        }
        Err(bad("unsupported URL: use http(s)://, data:<mime>;base64,... or file:// (see --allowed-local-media-path)"
            .into()))
    }

    fn fetch_http(&self, url: &str, part: &MediaPart) -> Result<Vec<u8>, ApiError> {
        let unreachable = |e: String| {
            ApiError::new(422, format!("{}: could not fetch {url}: {e}", part.param)).with_param(&part.param)
        };
        let mut response = self.agent.get(url).call().map_err(|e| unreachable(e.to_string()))?;
        let limit = self.opts.max_bytes as u64;
        match response.body_mut().with_config().limit(limit).read_to_vec() {
            Ok(bytes) => Ok(bytes),
            Err(ureq::Error::BodyExceedsLimit(_)) => Err(too_large(part, self.opts.max_bytes)),
            Err(e) => Err(unreachable(e.to_string())),
        }
    }

    fn read_local(&self, path: &Path, part: &MediaPart) -> Result<Vec<u8>, ApiError> {
        let bad = |msg: String| ApiError::bad_request(format!("{}: {msg}", part.param)).with_param(&part.param);
        let Some(root) = &self.opts.allowed_local_path else {
            return Err(bad(
                "local files cannot be read: the server was started without --allowed-local-media-path".into()
            ));
        };
        // Canonicalising resolves `..` and symlinks, so a path cannot climb out of the allowed root.
        let real = path.canonicalize().map_err(|e| bad(format!("cannot open {}: {e}", path.display())))?;
        if !real.starts_with(root) {
            return Err(ApiError::new(
                403,
                format!("{}: {} is outside the allowed media path {}", part.param, path.display(), root.display()),
            )
            .with_param(&part.param));
        }
        let file = std::fs::File::open(&real).map_err(|e| bad(format!("cannot open {}: {e}", path.display())))?;
        let mut bytes = Vec::new();
        file.take(self.opts.max_bytes as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
        if bytes.len() > self.opts.max_bytes {
            return Err(too_large(part, self.opts.max_bytes));
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::request::MediaKind;

    fn part(url: &str) -> MediaPart {
        MediaPart { kind: MediaKind::Image, url: url.into(), param: "messages[0].content[1]".into() }
    }

    #[test]
    fn data_urls_decode_and_errors_name_the_part() {
        let f = Fetcher::new(FetchOptions::default());
        assert_eq!(f.fetch(&part("data:image/png;base64,aGVsbG8=")).unwrap(), b"hello");
        let e = f.fetch(&part("data:image/png;base64,@@@")).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.starts_with("messages[0].content[1]: invalid base64"), "{}", e.message);
        assert_eq!(f.fetch(&part("ftp://x")).unwrap_err().status, 400);
    }

    #[test]
    fn local_files_only_under_the_allowed_root() {
        let dir = std::env::temp_dir().join(format!("glmv-fetch-{}", std::process::id()));
        let inside = dir.join("media");
        std::fs::create_dir_all(&inside).unwrap();
        std::fs::write(inside.join("a.png"), b"png").unwrap();
        std::fs::write(dir.join("secret.txt"), b"no").unwrap();
        let none = Fetcher::new(FetchOptions::default());
        assert_eq!(none.fetch(&part(&format!("file://{}/a.png", inside.display()))).unwrap_err().status, 400);
        let opts = FetchOptions { allowed_local_path: Some(inside.canonicalize().unwrap()), ..Default::default() };
        let f = Fetcher::new(opts);
        assert_eq!(f.fetch(&part(&format!("file://{}/a.png", inside.display()))).unwrap(), b"png");
        let climb = f.fetch(&part(&format!("file://{}/../secret.txt", inside.display()))).unwrap_err();
        assert_eq!(climb.status, 403, "{}", climb.message);
        let small = Fetcher::new(FetchOptions {
            allowed_local_path: Some(inside.canonicalize().unwrap()),
            max_bytes: 2,
            ..Default::default()
        });
        assert_eq!(small.fetch(&part(&format!("{}/a.png", inside.display()))).unwrap_err().status, 413);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

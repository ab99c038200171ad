//! `--request FILE.json` of `glmv generate` and `glmv logits`: an OpenAI chat completion body run through the
//! server's own prompt building (chat template, media fetching and preprocessing, placeholder expansion), so that
//! what the command line computes is what `glmv serve` would compute for the same body. Local media may be given as
//! `file://` URLs or bare paths (relative ones from the working directory); no directory restriction applies here.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use glmv_runtime::{config::ModelConfig, media::MediaLimits, pipeline::Prompt, text::ChatTemplate, text::Tokenizer};
use glmv_server::{
    fetch::{FetchOptions, Fetcher},
    media::ServerMedia,
    openai::{prompt::PromptBuilder, request::ChatRequest, ApiError},
};

/// A request file's prompt, and the request itself for its sampling fields.
pub struct RequestPrompt {
    pub prompt: Prompt,
    pub request: ChatRequest,
}

fn api_error(path: &Path, e: ApiError) -> String {
    format!("{}: {}", path.display(), e.to_json()["error"]["message"].as_str().unwrap_or("invalid request"))
}

/// Reads and builds the prompt of `path` for the checkpoint in `model_dir`.
pub fn load_request(
    path: &Path,
    model_dir: &Path,
    config: &ModelConfig,
) -> Result<RequestPrompt, Box<dyn std::error::Error>> {
    let body = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut request = ChatRequest::parse(&body, config.text.vocab_size).map_err(|e| api_error(path, e))?;
    let cwd = std::env::current_dir()?;
    for part in &mut request.media {
        part.url = absolute_local_path(&part.url, &cwd);
    }
    let tokenizer = Arc::new(Tokenizer::from_dir(model_dir)?);
    let fetcher = Fetcher::new(FetchOptions {
        allowed_local_path: Some(PathBuf::from("/")),
        timeout: Duration::from_secs(60),
        ..FetchOptions::default()
    });
    let media = ServerMedia::new(fetcher, MediaLimits::default(), model_dir, config, tokenizer.clone())?;
    let builder = PromptBuilder {
        tokenizer,
        template: ChatTemplate::from_dir(model_dir)?,
        tokens: config.tokens.clone(),
        media: Arc::new(media),
        max_images: usize::MAX,
        max_videos: usize::MAX,
    };
    let built = builder.chat(&request).map_err(|e| api_error(path, e))?;
    Ok(RequestPrompt { prompt: built.prompt, request })
}

/// A bare relative path made absolute from `cwd`; URLs (with a scheme) and absolute paths are left as they are.
fn absolute_local_path(url: &str, cwd: &Path) -> String {
    let has_scheme = url.split_once(':').is_some_and(|(scheme, _)| {
        !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
    });
    if has_scheme || url.starts_with('/') {
        return url.to_string();
    }
    cwd.join(url).display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bare_relative_paths_change() {
        let cwd = Path::new("/work/dir");
        assert_eq!(absolute_local_path("cat.png", cwd), "/work/dir/cat.png");
        assert_eq!(absolute_local_path("imgs/cat.png", cwd), "/work/dir/imgs/cat.png");
        assert_eq!(absolute_local_path("/tmp/cat.png", cwd), "/tmp/cat.png");
        assert_eq!(absolute_local_path("file:///tmp/cat.png", cwd), "file:///tmp/cat.png");
        assert_eq!(absolute_local_path("data:image/png;base64,AA==", cwd), "data:image/png;base64,AA==");
        assert_eq!(absolute_local_path("https://x/cat.png", cwd), "https://x/cat.png");
    }
}

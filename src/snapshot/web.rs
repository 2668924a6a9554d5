//! `[web]` as the running gateway holds it: the folder, its symlink rule, and the counter of
//! file answers in flight (edge/web.rs serves them).

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::Semaphore;

/// `[web]` as the running snapshot holds it.
#[derive(Debug)]
pub struct WebFiles {
    pub root: PathBuf,
    /// Serve symlinks whose target is outside `root` (`[web] follow_external_symlinks`).
    pub follow_external_symlinks: bool,
    /// One permit per answer in flight (`[web] max_responses`); held until the body ends.
    pub responses: Arc<Semaphore>,
    pub max_responses: usize,
}

impl WebFiles {
    /// `previous` keeps its counter when the cap is unchanged, so answers still streaming
    /// across a reload count against the same cap.
    pub fn new(
        root: PathBuf,
        follow_external_symlinks: bool,
        max_responses: usize,
        previous: Option<&WebFiles>,
    ) -> Self {
        let responses = match previous {
            Some(p) if p.max_responses == max_responses => p.responses.clone(),
            _ => Arc::new(Semaphore::new(max_responses)),
        };
        Self {
            root,
            follow_external_symlinks,
            responses,
            max_responses,
        }
    }
}

//! What a request's stages after routing know about it, in one value: `http` builds it,
//! the checks read it, `dial` dials from it and `handover` hands its route to the session.
//! Its own file so that those stages depend on it and not on one another.

use std::sync::Arc;

use crate::policy::ConnInfo;
use crate::snapshot::{Route, Snapshot};

/// What the stages after routing know about the request.
pub(super) struct Matched {
    pub(super) conn: ConnInfo,
    pub(super) route: Arc<Route>,
    pub(super) snapshot: Arc<Snapshot>,
}

//! The bot's Matrix client (SPEC §7): one logged-in device whose identity survives restarts.
//!
//! It owns the directory given to [`MatrixClient::connect`] (under the daemon's storage
//! directory): matrix-sdk's sqlite state and crypto stores (`store/`: rooms, the sync token,
//! the device's end-to-end keys) and `session.json` (user, device id and access token, mode
//! 0600). The first start logs in (password) or adopts an access token; every later start
//! restores that session, so the bot stays the same device — its keys, its sync position and
//! the homeserver's deduplication of its transaction ids all carry over.
//!
//! What to send and when is decided by `steps::chat`; this module only talks to the homeserver.

use std::path::{Path, PathBuf};

use matrix_sdk::authentication::matrix::MatrixSession;
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use matrix_sdk::ruma::{OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use matrix_sdk::store::RoomLoadSettings;
use matrix_sdk::{Client, SessionMeta, SessionTokens};

/// The device name the bot's login shows in clients' session lists.
const DEVICE_NAME: &str = "agent-fleet";

/// How the bot proves who it is on its first start.
pub enum Credentials {
    Password(String),
    AccessToken(String),
}

/// What can go wrong between the bot and its homeserver.
#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    #[error("`{0}` is not a homeserver URL: {1}")]
    Homeserver(String, String),
    #[error("`{0}` is not a Matrix user id")]
    UserId(String),
    #[error("cannot open the bot's stores under {path}: {source}")]
    Store {
        path: String,
        source: Box<matrix_sdk::ClientBuildError>,
    },
    #[error("cannot read or write the bot's session file {path}: {source}")]
    SessionFile {
        path: String,
        source: std::io::Error,
    },
    #[error("the bot's session file {path} cannot be read ({why}); remove it to log in again")]
    SessionCorrupt { path: String, why: String },
    #[error(
        "the bot's stored session is for {stored}, but the configuration names {configured}; \
         remove {path} to log in as {configured}"
    )]
    OtherUser {
        stored: String,
        configured: String,
        path: String,
    },
    #[error("the access token belongs to {owner}, not to {configured}")]
    TokenOwner { owner: String, configured: String },
    #[error("the homeserver gave no device id for the access token (a guest or appservice token?)")]
    NoDevice,
    #[error("Matrix: {0}")]
    Sdk(Box<matrix_sdk::Error>),
    #[error("Matrix: {0}")]
    Http(Box<matrix_sdk::HttpError>),
    #[error("the bot is not in room {0}")]
    NotJoined(String),
}

// Boxed: matrix-sdk's errors are large, and every result here carries them.
impl From<matrix_sdk::Error> for MatrixError {
    fn from(e: matrix_sdk::Error) -> Self {
        MatrixError::Sdk(Box::new(e))
    }
}

impl From<matrix_sdk::HttpError> for MatrixError {
    fn from(e: matrix_sdk::HttpError) -> Self {
        MatrixError::Http(Box::new(e))
    }
}

/// The bot's logged-in client.
#[derive(Clone)]
pub struct MatrixClient {
    client: Client,
    dir: PathBuf,
}

impl MatrixClient {
    /// Opens the stores in `dir` and restores the stored session, or logs in as `user` with
    /// `credentials` (first start) and stores the session.
    pub async fn connect(
        homeserver: &str,
        user: &str,
        credentials: Credentials,
        dir: &Path,
    ) -> Result<MatrixClient, MatrixError> {
        let user_id = UserId::parse(user).map_err(|_| MatrixError::UserId(user.to_string()))?;
        let url = reqwest::Url::parse(homeserver)
            .map_err(|e| MatrixError::Homeserver(homeserver.to_string(), e.to_string()))?;
        create_private_dir(dir)?;
        let store = dir.join("store");
        let client = Client::builder()
            .homeserver_url(url)
            .sqlite_store(&store, None)
            .build()
            .await
            .map_err(|source| MatrixError::Store {
                path: store.display().to_string(),
                source: Box::new(source),
            })?;
        let this = MatrixClient {
            client,
            dir: dir.to_path_buf(),
        };
        match this.stored_session()? {
            Some(session) => {
                if session.meta.user_id != user_id {
                    return Err(MatrixError::OtherUser {
                        stored: session.meta.user_id.to_string(),
                        configured: user.to_string(),
                        path: this.session_path().display().to_string(),
                    });
                }
                this.restore(session).await?;
            }
            None => {
                let session = this.log_in(&user_id, credentials).await?;
                this.store_session(&session)?;
            }
        }
        Ok(this)
    }

    async fn log_in(
        &self,
        user_id: &UserId,
        credentials: Credentials,
    ) -> Result<MatrixSession, MatrixError> {
        match credentials {
            Credentials::Password(password) => {
                let auth = self.client.matrix_auth();
                auth.login_username(user_id, &password)
                    .initial_device_display_name(DEVICE_NAME)
                    .send()
                    .await?;
                auth.session().ok_or(MatrixError::NoDevice)
            }
            Credentials::AccessToken(token) => {
                let session = MatrixSession {
                    meta: SessionMeta {
                        user_id: user_id.to_owned(),
                        // Replaced below by the token's own device, once the homeserver says.
                        device_id: "UNKNOWN".into(),
                    },
                    tokens: SessionTokens {
                        access_token: token.clone(),
                        refresh_token: None,
                    },
                };
                // whoami needs a session to authenticate; ask with a provisional one.
                let probe = Client::builder()
                    .homeserver_url(self.client.homeserver())
                    .build()
                    .await
                    .map_err(|source| MatrixError::Store {
                        path: "(memory)".into(),
                        source: Box::new(source),
                    })?;
                probe
                    .matrix_auth()
                    .restore_session(session, RoomLoadSettings::default())
                    .await?;
                let me = probe.whoami().await?;
                if me.user_id != user_id {
                    return Err(MatrixError::TokenOwner {
                        owner: me.user_id.to_string(),
                        configured: user_id.to_string(),
                    });
                }
                let device_id = me.device_id.ok_or(MatrixError::NoDevice)?;
                let session = MatrixSession {
                    meta: SessionMeta {
                        user_id: me.user_id,
                        device_id,
                    },
                    tokens: SessionTokens {
                        access_token: token,
                        refresh_token: None,
                    },
                };
                self.restore(session.clone()).await?;
                Ok(session)
            }
        }
    }

    async fn restore(&self, session: MatrixSession) -> Result<(), MatrixError> {
        self.client
            .matrix_auth()
            .restore_session(session, RoomLoadSettings::default())
            .await?;
        Ok(())
    }

    fn session_path(&self) -> PathBuf {
        self.dir.join("session.json")
    }

    fn stored_session(&self) -> Result<Option<MatrixSession>, MatrixError> {
        let path = self.session_path();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(MatrixError::SessionFile {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| MatrixError::SessionCorrupt {
                path: path.display().to_string(),
                why: e.to_string(),
            })
    }

    /// Writes the session file whole (a temporary file renamed over it), readable by its owner
    /// only: it holds the access token.
    fn store_session(&self, session: &MatrixSession) -> Result<(), MatrixError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.session_path();
        let tmp = self.dir.join("session.json.tmp");
        let err = |source| MatrixError::SessionFile {
            path: path.display().to_string(),
            source,
        };
        // MatrixSession is plain strings: it always serialises.
        let bytes = serde_json::to_vec_pretty(session).unwrap_or_default();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        file.write_all(&bytes).map_err(err)?;
        file.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)?;
        Ok(())
    }

    /// The bot's user id.
    pub fn user_id(&self) -> Option<OwnedUserId> {
        self.client.user_id().map(ToOwned::to_owned)
    }

    /// The bot's device (the same across restarts).
    pub fn device_id(&self) -> Option<OwnedDeviceId> {
        self.client.device_id().map(ToOwned::to_owned)
    }

    /// Joins `room` (an id or an alias) and returns its id.
    pub async fn join(&self, room: &str) -> Result<OwnedRoomId, MatrixError> {
        let target = matrix_sdk::ruma::OwnedRoomOrAliasId::try_from(room)
            .map_err(|_| MatrixError::NotJoined(room.to_string()))?;
        let joined = self.client.join_room_by_id_or_alias(&target, &[]).await?;
        Ok(joined.room_id().to_owned())
    }

    /// One sync with the homeserver (from the stored position), so that the client knows the
    /// rooms it is in.
    pub async fn sync_once(&self) -> Result<(), MatrixError> {
        self.client
            .sync_once(matrix_sdk::config::SyncSettings::default())
            .await?;
        Ok(())
    }

    /// Posts a message (plain text and HTML) to `room` under transaction id `txn`: sending the
    /// same `txn` again from this device posts nothing new and returns the same event.
    pub async fn send(
        &self,
        room: &RoomId,
        plain: &str,
        html: &str,
        txn: &str,
    ) -> Result<OwnedEventId, MatrixError> {
        let joined = self
            .client
            .get_room(room)
            .ok_or_else(|| MatrixError::NotJoined(room.to_string()))?;
        let content = RoomMessageEventContent::text_html(plain, html);
        let sent = joined.send(content).with_transaction_id(txn.into()).await?;
        Ok(sent.response.event_id)
    }
}

/// Creates `dir` (and its parents) readable by its owner only: it holds keys and a token.
fn create_private_dir(dir: &Path) -> Result<(), MatrixError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = |source| MatrixError::SessionFile {
        path: dir.display().to_string(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)
}

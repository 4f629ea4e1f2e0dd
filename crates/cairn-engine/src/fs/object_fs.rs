//! [`ObjectFs`]: an S3 bucket (or any S3-compatible store) seen through the [`FileSystem`] seam, so
//! snapshot volumes, global manifests and read-only shards can live in object storage. Built with the
//! `s3` cargo feature, on `object_store` (see ARCHITECTURE.md, decision 19).
//!
//! How file-system calls map onto objects (a path `/a/b/c` is the object key `a/b/c`):
//! - `create` + `append` + `sync`: the object appears, whole, when `sync` returns. Until then bytes are
//!   buffered (at most [`PART_BYTES`]) and large objects go up as a multipart upload, part by part. A
//!   file dropped without `sync` never appears. Nothing may be appended after `sync`.
//! - `open` / `read_exact_at`: one HEAD for the length, then one ranged GET per read.
//! - `link`: a server-side copy (no bytes pass through this process); `rename`: copy then delete, so the
//!   target shows the old object or the new one, never a mix.
//! - directories do not exist in object storage: `create_dir_all` and `sync_dir` do nothing, a directory
//!   "exists" while some object lies under it, `list` lists one level under a prefix.
//! - `lock`: a conditional PUT (`If-None-Match: *`) of the lock object, deleted when the lock drops. A
//!   process that dies holding it leaves it behind; `Error::Locked` names the object to delete.
//!
//! Every call blocks the calling thread on a small private tokio runtime, so the engine stays
//! synchronous and callers may be inside or outside an async runtime of their own.

use super::{FileLock, FileSystem, RandomAccessFile, WritableFile};
use crate::error::{Error, Result};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{MultipartUpload, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Bytes buffered per open object before a multipart part goes up (S3's minimum part is 5 MiB).
pub const PART_BYTES: usize = 8 << 20;

/// Query keys of an `s3://` URL that would put a secret in it: refused, credentials come from the
/// environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`) or instance roles.
const SECRET_KEYS: [&str; 8] = [
    "access_key_id",
    "secret_access_key",
    "session_token",
    "token",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "aws_token",
];

/// An S3 bucket as a file system. Cheap to clone; clones share one client.
#[derive(Clone)]
pub struct ObjectFs {
    store: Arc<dyn ObjectStore>,
    bucket: String,
    identity: usize,
}

impl std::fmt::Debug for ObjectFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectFs(s3://{})", self.bucket)
    }
}

/// An `s3://bucket/prefix?options` URL, taken apart.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct S3Url {
    /// The bucket.
    pub bucket: String,
    /// The key prefix the volume lives under ("" for the whole bucket).
    pub prefix: String,
    /// Sorted `key=value` client options (endpoint, region, allow_http, ...).
    pub options: Vec<(String, String)>,
}

impl S3Url {
    /// Parses `url`; errors name the URL and what is wrong with it.
    pub(crate) fn parse(url: &str) -> Result<S3Url> {
        let bad = |why: String| Error::InvalidArgument(format!("volume URL {url:?}: {why}"));
        let rest = url.strip_prefix("s3://").ok_or_else(|| bad("not an s3:// URL".into()))?;
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !bucket_ok {
            return Err(bad(format!(
                "bucket {bucket:?} is not a valid S3 bucket name (3-63 of a-z, 0-9, '-', '.')"
            )));
        }
        let prefix = prefix.trim_matches('/').to_string();
        if prefix.split('/').any(|s| s == "." || s == "..") || prefix.contains("//") {
            return Err(bad(format!("prefix {prefix:?} has an empty, '.' or '..' segment")));
        }
        let mut options = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) =
                pair.split_once('=').ok_or_else(|| bad(format!("option {pair:?} has no '='")))?;
            let key = key.to_ascii_lowercase();
            if SECRET_KEYS.contains(&key.as_str()) {
                return Err(bad(format!(
                    "option {key:?} would put a credential in the URL; set AWS_ACCESS_KEY_ID and \
                     AWS_SECRET_ACCESS_KEY in the environment instead"
                )));
            }
            if key.parse::<AmazonS3ConfigKey>().is_err() {
                return Err(bad(format!("unknown option {key:?} (e.g. endpoint, region, allow_http)")));
            }
            options.push((key, value.to_string()));
        }
        options.sort();
        Ok(S3Url { bucket: bucket.to_string(), prefix, options })
    }

    /// The canonical form: trailing slashes dropped, options sorted.
    pub(crate) fn normalized(&self) -> String {
        let mut out = format!("s3://{}", self.bucket);
        if !self.prefix.is_empty() {
            out.push('/');
            out.push_str(&self.prefix);
        }
        for (i, (k, v)) in self.options.iter().enumerate() {
            out.push(if i == 0 { '?' } else { '&' });
            out.push_str(k);
            out.push('=');
            out.push_str(v);
        }
        out
    }

    /// The volume's root directory on the bucket's [`ObjectFs`].
    pub(crate) fn root(&self) -> PathBuf {
        Path::new("/").join(&self.prefix)
    }
}

/// The shared runtime every object-store call runs on.
fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("cairn-s3")
                // Transfers are bulk work (backups, restores, snapshots): see `crate::bulk`. Everything
                // on object storage runs here, so a caller holding a lock while it waits for a transfer
                // (`Db::snapshot` onto an `s3://` snapshot volume) waits for low-priority threads.
                .on_thread_start(|| {
                    crate::bulk::lower_this_thread();
                })
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Error::io("s3 runtime", std::io::Error::other(e.clone())))
}

/// Runs `fut` on the object-store runtime and waits for it from this (synchronous) thread.
fn block_on<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> Result<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime()?.spawn(async move {
        let _receiver_gone = tx.send(fut.await);
    });
    rx.recv().map_err(|_| Error::io("s3 runtime", std::io::Error::other("object-store task was lost")))
}

/// Clients by bucket and options: resolving a volume URL again reuses its client.
fn clients() -> &'static Mutex<HashMap<String, ObjectFs>> {
    static CLIENTS: OnceLock<Mutex<HashMap<String, ObjectFs>>> = OnceLock::new();
    CLIENTS.get_or_init(|| Mutex::new(HashMap::new()))
}

impl ObjectFs {
    /// The file system of `url`'s bucket, with the client built from the environment (`AWS_*`
    /// variables) and the URL's options. Clients are cached per bucket and options.
    pub(crate) fn for_url(url: &S3Url) -> Result<ObjectFs> {
        let mut key = format!("s3://{}", url.bucket);
        for (k, v) in &url.options {
            key.push_str(&format!("&{k}={v}"));
        }
        if let Some(fs) = clients().lock().get(&key) {
            return Ok(fs.clone());
        }
        // reqwest is built without a compiled-in TLS provider: use ring (no C++ or cmake in the build).
        // Installing fails only if the process already chose one, which is then used.
        let _already_installed = rustls::crypto::ring::default_provider().install_default();
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&url.bucket);
        for (k, v) in &url.options {
            let config_key: AmazonS3ConfigKey = k.parse().map_err(|e| {
                Error::InvalidArgument(format!("volume URL {:?}: option {k:?}: {e}", url.normalized()))
            })?;
            builder = builder.with_config(config_key, v);
        }
        let store = builder.build().map_err(|e| {
            Error::InvalidArgument(format!("volume URL {:?}: cannot build S3 client: {e}", url.normalized()))
        })?;
        let identity = (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) as usize) | 1;
        let fs = ObjectFs { store: Arc::new(store), bucket: url.bucket.clone(), identity };
        clients().lock().insert(key, fs.clone());
        Ok(fs)
    }

    /// The object key of `path` (absolute; its leading '/' dropped).
    fn key(&self, path: &Path) -> Result<ObjectPath> {
        let text = path.to_str().and_then(|p| p.strip_prefix('/')).ok_or_else(|| {
            Error::InvalidArgument(format!("{} is not an absolute UTF-8 path", path.display()))
        })?;
        ObjectPath::parse(text.trim_end_matches('/'))
            .map_err(|e| Error::InvalidArgument(format!("{} is not a valid object key: {e}", path.display())))
    }

    /// How `path` shows in errors: the object's URL.
    fn display(&self, path: &Path) -> PathBuf {
        PathBuf::from(format!("s3://{}{}", self.bucket, path.display()))
    }

    /// Maps an object-store error on `path` to an I/O error (not found and already-exists keep their
    /// kinds, so callers can tell them apart).
    fn err(&self, path: &Path, e: object_store::Error) -> Error {
        let kind = match &e {
            object_store::Error::NotFound { .. } => std::io::ErrorKind::NotFound,
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
                std::io::ErrorKind::AlreadyExists
            }
            _ => std::io::ErrorKind::Other,
        };
        Error::io(self.display(path), std::io::Error::new(kind, e.to_string()))
    }

    /// Runs one request against the store.
    fn call<T: Send + 'static, F: Future<Output = object_store::Result<T>> + Send + 'static>(
        &self,
        path: &Path,
        request: impl FnOnce(Arc<dyn ObjectStore>) -> F,
    ) -> Result<T> {
        block_on(request(Arc::clone(&self.store)))?.map_err(|e| self.err(path, e))
    }

    /// The object's size, or `None` if there is no object at `path`.
    fn head(&self, path: &Path) -> Result<Option<u64>> {
        let key = self.key(path)?;
        match block_on({
            let store = Arc::clone(&self.store);
            async move { store.head(&key).await }
        })? {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(path, e)),
        }
    }

    /// Entries one level under `dir`: (object names, sub-prefix names).
    fn list_level(&self, dir: &Path) -> Result<(Vec<String>, Vec<String>)> {
        let key = self.key(dir)?;
        let listed = self.call(dir, move |s| async move { s.list_with_delimiter(Some(&key)).await })?;
        let name = |p: &ObjectPath| p.filename().map(str::to_string);
        Ok((
            listed.objects.iter().filter_map(|o| name(&o.location)).collect(),
            listed.common_prefixes.iter().filter_map(name).collect(),
        ))
    }
}

/// An object being written: buffered, then uploaded at `sync` (multipart once it outgrows a part).
struct ObjectWriter {
    fs: ObjectFs,
    path: PathBuf,
    key: ObjectPath,
    buf: Vec<u8>,
    /// In a mutex only to make the writer `Sync` (uploads are not); `&mut self` reaches it lock-free.
    upload: Mutex<Option<Box<dyn MultipartUpload>>>,
    len: u64,
    done: bool,
}

impl ObjectWriter {
    /// Uploads `data` as the next part, starting the multipart upload if needed.
    fn put_part(&mut self, data: Vec<u8>) -> Result<()> {
        let mut upload = match self.upload.get_mut().take() {
            Some(u) => u,
            None => {
                let key = self.key.clone();
                self.fs.call(&self.path, move |s| async move { s.put_multipart(&key).await })?
            }
        };
        let (upload, result) = block_on(async move {
            let result = upload.put_part(PutPayload::from(data)).await;
            (upload, result)
        })?;
        *self.upload.get_mut() = Some(upload);
        result.map_err(|e| self.fs.err(&self.path, e))
    }
}

impl WritableFile for ObjectWriter {
    fn append(&mut self, data: &[u8]) -> Result<()> {
        if self.done {
            return Err(Error::InvalidArgument(format!(
                "{}: an object cannot be appended to after sync",
                self.fs.display(&self.path).display()
            )));
        }
        self.buf.extend_from_slice(data);
        self.len += data.len() as u64;
        while self.buf.len() >= PART_BYTES {
            let rest = self.buf.split_off(PART_BYTES);
            let part = std::mem::replace(&mut self.buf, rest);
            self.put_part(part)?;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        if self.done {
            return Ok(());
        }
        let data = std::mem::take(&mut self.buf);
        if self.upload.get_mut().is_none() {
            let key = self.key.clone();
            self.fs.call(&self.path, move |s| async move { s.put(&key, PutPayload::from(data)).await })?;
        } else {
            if !data.is_empty() {
                self.put_part(data)?;
            }
            if let Some(mut upload) = self.upload.get_mut().take() {
                self.fs.call(&self.path, move |_| async move { upload.complete().await })?;
            }
        }
        self.done = true;
        Ok(())
    }

    fn len(&self) -> u64 {
        self.len
    }
}

impl Drop for ObjectWriter {
    fn drop(&mut self) {
        // An upload never completed leaves no object; abort it so its parts do not linger (best effort:
        // buckets should also expire incomplete uploads).
        if let Some(mut upload) = self.upload.get_mut().take() {
            let _best_effort = block_on(async move { upload.abort().await });
        }
    }
}

/// An object open for ranged reads.
struct ObjectReader {
    fs: ObjectFs,
    path: PathBuf,
    key: ObjectPath,
    len: u64,
}

impl RandomAccessFile for ObjectReader {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64).filter(|&e| e <= self.len).ok_or_else(|| {
            Error::io(
                self.fs.display(&self.path),
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("read of {} bytes at {offset} past the end ({})", buf.len(), self.len),
                ),
            )
        })?;
        if buf.is_empty() {
            return Ok(());
        }
        let key = self.key.clone();
        let bytes = self.fs.call(&self.path, move |s| async move { s.get_range(&key, offset..end).await })?;
        if bytes.len() != buf.len() {
            return Err(Error::io(
                self.fs.display(&self.path),
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("asked for {} bytes at {offset}, got {}", buf.len(), bytes.len()),
                ),
            ));
        }
        buf.copy_from_slice(&bytes);
        Ok(())
    }

    fn len(&self) -> u64 {
        self.len
    }
}

/// The lock object; deleted on drop.
struct ObjectLock {
    fs: ObjectFs,
    key: ObjectPath,
}

impl FileLock for ObjectLock {}

impl Drop for ObjectLock {
    fn drop(&mut self) {
        let key = self.key.clone();
        let store = Arc::clone(&self.fs.store);
        let _best_effort = block_on(async move { store.delete(&key).await });
    }
}

impl FileSystem for ObjectFs {
    fn create(&self, path: &Path) -> Result<Box<dyn WritableFile>> {
        Ok(Box::new(ObjectWriter {
            fs: self.clone(),
            path: path.to_path_buf(),
            key: self.key(path)?,
            buf: Vec::new(),
            upload: Mutex::new(None),
            len: 0,
            done: false,
        }))
    }

    fn open(&self, path: &Path) -> Result<Arc<dyn RandomAccessFile>> {
        let len = self.head(path)?.ok_or_else(|| {
            Error::io(self.display(path), std::io::Error::new(std::io::ErrorKind::NotFound, "no such object"))
        })?;
        Ok(Arc::new(ObjectReader { fs: self.clone(), path: path.to_path_buf(), key: self.key(path)?, len }))
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        let (src, dst) = (self.key(from)?, self.key(to)?);
        self.call(from, move |s| async move { s.copy(&src, &dst).await })?;
        let src = self.key(from)?;
        self.call(from, move |s| async move { s.delete(&src).await })
    }

    fn remove(&self, path: &Path) -> Result<()> {
        let key = self.key(path)?;
        self.call(path, move |s| async move { s.delete(&key).await })
    }

    fn link(&self, from: &Path, to: &Path) -> Result<()> {
        if self.head(to)?.is_some() {
            return Err(Error::io(
                self.display(to),
                std::io::Error::new(std::io::ErrorKind::AlreadyExists, "object exists"),
            ));
        }
        let (src, dst) = (self.key(from)?, self.key(to)?);
        self.call(from, move |s| async move { s.copy(&src, &dst).await })
    }

    fn remove_dir(&self, dir: &Path) -> Result<()> {
        let (objects, prefixes) = self.list_level(dir)?;
        if objects.is_empty() && prefixes.is_empty() {
            return Ok(());
        }
        Err(Error::io(
            self.display(dir),
            std::io::Error::new(std::io::ErrorKind::DirectoryNotEmpty, "objects remain under the prefix"),
        ))
    }

    fn list(&self, dir: &Path) -> Result<Vec<String>> {
        let (mut names, prefixes) = self.list_level(dir)?;
        names.extend(prefixes);
        Ok(names)
    }

    fn exists(&self, path: &Path) -> Result<bool> {
        if self.head(path)?.is_some() {
            return Ok(true);
        }
        let (objects, prefixes) = self.list_level(path)?;
        Ok(!objects.is_empty() || !prefixes.is_empty())
    }

    fn create_dir_all(&self, _dir: &Path) -> Result<()> {
        Ok(())
    }

    fn sync_dir(&self, _dir: &Path) -> Result<()> {
        Ok(())
    }

    fn lock(&self, path: &Path) -> Result<Box<dyn FileLock>> {
        let key = self.key(path)?;
        let owner =
            format!("pid {} at {} ms since the epoch\n", std::process::id(), crate::snapshot::now_ms());
        let put_key = key.clone();
        let result = block_on({
            let store = Arc::clone(&self.store);
            async move {
                let opts = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
                store.put_opts(&put_key, PutPayload::from(owner.into_bytes()), opts).await
            }
        })?;
        match result {
            Ok(_) => Ok(Box::new(ObjectLock { fs: self.clone(), key })),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                Err(Error::Locked(self.display(path)))
            }
            Err(e) => Err(self.err(path, e)),
        }
    }

    fn identity(&self) -> usize {
        self.identity
    }

    fn creates_whole_files(&self) -> bool {
        true
    }

    fn read_all(&self, path: &Path) -> Result<Vec<u8>> {
        let key = self.key(path)?;
        let bytes = self.call(path, move |s| async move { s.get(&key).await?.bytes().await })?;
        Ok(bytes.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_normalize_and_refuse_secrets() {
        let u = S3Url::parse("s3://my-bucket/a/b/?region=us-east-1&endpoint=http://127.0.0.1:9000").unwrap();
        assert_eq!(u.bucket, "my-bucket");
        assert_eq!(u.prefix, "a/b");
        assert_eq!(u.normalized(), "s3://my-bucket/a/b?endpoint=http://127.0.0.1:9000&region=us-east-1");
        assert_eq!(u.root(), PathBuf::from("/a/b"));
        assert_eq!(S3Url::parse("s3://bucket").unwrap().root(), PathBuf::from("/"));
        for bad in [
            "s3://",
            "s3://B/x",
            "s3://ab/x",
            "s3://bucket/a//b",
            "s3://bucket/../x",
            "s3://bucket/x?nokey",
            "s3://bucket/x?colour=blue",
            "s3://bucket/x?secret_access_key=s",
        ] {
            let e = S3Url::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }
}

//! Sessions: identifiers, the record, and the stores behind one trait.
//!
//! **Architecture invariant:** only `redis.rs` talks to Redis; `record.rs` and `id.rs` do no I/O.

mod changes;
mod forward_headers;
mod id;
mod instrumented;
mod memory;
mod read_cache;
mod record;
mod redis;
mod sealed_cookie;
mod sealed_record;
mod store;
mod verified;

pub use changes::{ChangeFeed, ChangeWatch};
pub use forward_headers::{ForwardHeaders, ForwardValues};
pub use id::{CookieCodec, SessionId, SessionKey};
pub use instrumented::InstrumentedStore;
pub use memory::MemoryStore;
pub use read_cache::{CachedStore, ReadCacheSettings, ReadCacheStats};
pub use record::{Freshness, Identity, SessionRecord, TokenSet, UnixMillis, UnsettledRefresh, now_millis};
pub use redis::{ClientPem, RedisOptions, RedisStore};
pub use sealed_cookie::{CookiePayload, CookieSealer, MAX_CHUNKS, chunk_name, chunks_present, join as join_chunks, split as split_chunks};
pub use store::{CasOutcome, DeleteOutcome, Lifetimes, SessionStore, StoreError};

//! The wall clock as attache's records and the stores keep time: since the Unix epoch, in
//! milliseconds (job records, the store's part times, copying-store measurements) or seconds
//! (open-upload records, the known-present index). A clock before 1970 reads as 0.

/// Now, in milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Now, in seconds since the epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

//! Rollback of a replica through its undo journal, and the roll-forward file that lets the
//! paused replica move forward again.
//!
//! Rolling back from image A to image R applies the undo records A, A-1, …, R+1 (newest
//! first): each puts back the bytes its redo record overwrote, so the replica is production
//! as of exactly R. Before an undo record's bytes go back, the bytes it replaces — the redo
//! record's own data, as of its seq — are appended to the roll-forward file, so moving
//! forward again (a later point, or resuming apply) replays them in seq order and the redo
//! records the journal copy already pruned are not needed.
//!
//! **Crash safety.** The state file says "rolling back from X to R" before the first byte
//! of the replica changes. Applying the undo records X..R+1 in that order is idempotent from
//! any mix of them already applied (every byte ends with the value of the lowest-seq undo
//! record covering it, and bytes no record covers are untouched), so a restart finishes the
//! rollback. The roll-forward file written before the crash may be incomplete: the state then
//! says so, and resuming is refused with what to do instead.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use redoubt_journal::{OwnedRecord, RecordHeader};

use crate::error::ReplicationError;

pub const ROLLFORWARD_FILE_NAME: &str = "rollforward.log";
/// Largest roll-forward file read back into its index; the undo journal it mirrors is bounded
/// by the log record file container, far below this.
pub const ROLLFORWARD_FILE_BYTES_MAX: u64 = 1 << 40;

/// Where the roll-forward file of a group lives.
pub fn rollforward_path(group_dir: &Path) -> PathBuf {
    group_dir.join(ROLLFORWARD_FILE_NAME)
}

/// The roll-forward file: journal-encoded redo records appended newest first (CRC-checked on
/// read), indexed by seq.
pub struct Rollforward {
    file: File,
    path: PathBuf,
    /// (seq, offset in the file, encoded length), in file order.
    index: Vec<(u64, u64, u64)>,
    end_bytes: u64,
}

impl Rollforward {
    /// Creates an empty roll-forward file, replacing any earlier one.
    pub fn create(group_dir: &Path) -> Result<Rollforward, ReplicationError> {
        let path = rollforward_path(group_dir);
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)?;
        Ok(Rollforward {
            file,
            path,
            index: Vec::new(),
            end_bytes: 0,
        })
    }

    /// Opens the file a paused replica left, checking every record; a torn tail (a crash while
    /// appending) ends the index there.
    pub fn open(group_dir: &Path) -> Result<Rollforward, ReplicationError> {
        let path = rollforward_path(group_dir);
        let mut file = OpenOptions::new().read(true).write(true).open(&path)?;
        let length_bytes = file.metadata()?.len();
        if length_bytes > ROLLFORWARD_FILE_BYTES_MAX {
            return Err(ReplicationError::State {
                action: "open roll-forward file",
                path,
                reason: format!(
                    "{length_bytes} bytes is more than the {ROLLFORWARD_FILE_BYTES_MAX} limit"
                ),
            });
        }
        let mut index = Vec::new();
        let mut offset = 0u64;
        let mut header_bytes = vec![0u8; redoubt_journal::RECORD_HEADER_SIZE_BYTES];
        while offset + header_bytes.len() as u64 <= length_bytes {
            file.seek(SeekFrom::Start(offset))?;
            file.read_exact(&mut header_bytes)?;
            let Ok(Some((_, payload_length))) = redoubt_journal::decode_header(&header_bytes)
            else {
                break;
            };
            let encoded = redoubt_journal::encoded_size_bytes(payload_length as usize);
            if offset + encoded > length_bytes {
                break;
            }
            let mut bytes = vec![0u8; encoded as usize];
            file.seek(SeekFrom::Start(offset))?;
            file.read_exact(&mut bytes)?;
            match redoubt_journal::decode(&bytes) {
                Ok(Some((record, _))) => index.push((record.header.seq, offset, encoded)),
                _ => break,
            }
            offset += encoded;
        }
        Ok(Rollforward {
            file,
            path,
            index,
            end_bytes: offset,
        })
    }

    pub fn append(
        &mut self,
        header: &RecordHeader,
        payload: &[u8],
    ) -> Result<(), ReplicationError> {
        let mut bytes =
            Vec::with_capacity(payload.len() + redoubt_journal::RECORD_HEADER_SIZE_BYTES + 8);
        redoubt_journal::encode(header, payload, &mut bytes);
        self.file.seek(SeekFrom::Start(self.end_bytes))?;
        self.file.write_all(&bytes)?;
        self.index
            .push((header.seq, self.end_bytes, bytes.len() as u64));
        self.end_bytes += bytes.len() as u64;
        Ok(())
    }

    pub fn sync(&mut self) -> Result<(), ReplicationError> {
        self.file.sync_data()?;
        Ok(())
    }

    /// The lowest seq the file holds (it is written newest first).
    pub fn first_seq(&self) -> Option<u64> {
        self.index.iter().map(|(seq, _, _)| *seq).min()
    }

    /// The records with seq in `after+1..=through`, ascending.
    pub fn read_range(
        &mut self,
        after: u64,
        through: u64,
    ) -> Result<Vec<OwnedRecord>, ReplicationError> {
        let mut wanted: Vec<(u64, u64, u64)> = self
            .index
            .iter()
            .copied()
            .filter(|(seq, _, _)| *seq > after && *seq <= through)
            .collect();
        wanted.sort_unstable_by_key(|(seq, _, _)| *seq);
        wanted.dedup_by_key(|(seq, _, _)| *seq);
        let mut records = Vec::with_capacity(wanted.len());
        for (seq, offset, length) in wanted {
            let mut bytes = vec![0u8; length as usize];
            self.file.seek(SeekFrom::Start(offset))?;
            self.file.read_exact(&mut bytes)?;
            let record = match redoubt_journal::decode(&bytes) {
                Ok(Some((record, _))) => record.to_owned_record(),
                _ => {
                    return Err(ReplicationError::State {
                        action: "read roll-forward file",
                        path: self.path.clone(),
                        reason: format!("the record of seq {seq} at byte {offset} is damaged"),
                    })
                }
            };
            records.push(record);
        }
        Ok(records)
    }

    pub fn remove(self) -> Result<(), ReplicationError> {
        drop(self.file);
        redoubt_durable::remove(&self.path)?;
        Ok(())
    }
}

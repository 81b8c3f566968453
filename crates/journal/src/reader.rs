//! Reading records back: the streaming segment scanner shared by recovery and the
//! [`JournalReader`] the LCA and replay use.

use std::io;
use std::path::{Path, PathBuf};

use crate::error::JournalError;
use crate::fs::{join, JournalFs, SegmentFile};
use crate::record::{
    decode, decode_header, DecodeError, OwnedRecord, RecordHeader, RECORD_HEADER_SIZE_BYTES,
};
use crate::segment::{segment_file_name, GroupId, SegmentHeader, SEGMENT_HEADER_SIZE_BYTES};

/// What lies at a byte offset of a segment file.
#[derive(Debug)]
pub(crate) enum RecordAt {
    /// A valid record of `size_bytes`; its payload is in the scratch buffer after the header.
    Record {
        header: RecordHeader,
        size_bytes: u64,
    },
    /// Exactly at end of file.
    End,
    /// A strict prefix of a record: a torn tail.
    Incomplete,
    /// Bytes that cannot start a valid record: corruption or a torn tail with garbage.
    Corrupt(DecodeError),
}

/// Read and validate the record at `offset_bytes`, using `scratch` as the record buffer so
/// a scan allocates once per segment rather than once per record.
pub(crate) fn read_record_at<File: SegmentFile>(
    file: &File,
    offset_bytes: u64,
    file_size_bytes: u64,
    scratch: &mut Vec<u8>,
) -> io::Result<RecordAt> {
    assert!(offset_bytes >= SEGMENT_HEADER_SIZE_BYTES as u64);
    assert!(offset_bytes <= file_size_bytes);
    let remaining_bytes = file_size_bytes - offset_bytes;
    if remaining_bytes == 0 {
        return Ok(RecordAt::End);
    }
    let header_bytes = remaining_bytes.min(RECORD_HEADER_SIZE_BYTES as u64) as usize;
    scratch.resize(header_bytes, 0);
    let filled = file.read_exact_or_eof(offset_bytes, scratch)?;
    scratch.truncate(filled);
    let payload_length = match decode_header(scratch) {
        Err(error) => return Ok(RecordAt::Corrupt(error)),
        Ok(None) => return Ok(RecordAt::Incomplete),
        Ok(Some((_, payload_length))) => payload_length,
    };
    let size_bytes = RECORD_HEADER_SIZE_BYTES as u64 + u64::from(payload_length);
    if size_bytes > remaining_bytes {
        return Ok(RecordAt::Incomplete);
    }
    scratch.resize(size_bytes as usize, 0);
    let filled = file.read_exact_or_eof(offset_bytes, scratch)?;
    scratch.truncate(filled);
    match decode(scratch) {
        Err(error) => Ok(RecordAt::Corrupt(error)),
        Ok(None) => Ok(RecordAt::Incomplete),
        Ok(Some((record, used))) => {
            assert_eq!(used as u64, size_bytes);
            Ok(RecordAt::Record {
                header: record.header,
                size_bytes,
            })
        }
    }
}

/// Read the segment header of `file` and check it belongs to this journal and file name.
pub(crate) fn check_segment_header<File: SegmentFile>(
    file: &File,
    path: &Path,
    group_id: GroupId,
    name_seq: u64,
) -> Result<(), JournalError> {
    let mut bytes = [0u8; SEGMENT_HEADER_SIZE_BYTES];
    let filled = file
        .read_exact_or_eof(0, &mut bytes)
        .map_err(JournalError::io("read journal segment header", path))?;
    let header =
        SegmentHeader::decode(&bytes[..filled]).map_err(|source| JournalError::SegmentHeader {
            path: path.to_path_buf(),
            source,
        })?;
    if header.group_id != group_id {
        return Err(JournalError::GroupMismatch {
            path: path.to_path_buf(),
            expected: group_id,
            found: header.group_id,
        });
    }
    if header.first_seq != name_seq {
        return Err(JournalError::SegmentNameMismatch {
            path: path.to_path_buf(),
            name_seq,
            header_seq: header.first_seq,
        });
    }
    Ok(())
}

/// A segment the reader will visit, captured when the reader was created.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SegmentRef {
    pub(crate) first_seq: u64,
    pub(crate) partial: bool,
}

struct Cursor<File> {
    file: File,
    path: PathBuf,
    offset_bytes: u64,
    seq_expected: u64,
}

/// Where a reader stopped in a segment: a later reader of the same directory starts there
/// instead of scanning the segment from its first record ([`JournalReader::resume_at`]). The
/// send process reads the journal's tail again and again; without it, each read costs the
/// whole segment written so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadPosition {
    /// The segment (its first seq).
    pub segment_first_seq: u64,
    /// The byte offset of the record `seq_next` in that segment.
    pub offset_bytes: u64,
    pub seq_next: u64,
}

/// Iterates records `seq_from..=seq_last` in sequence order across segments, where
/// `seq_last` is the durable seq when the reader was created. Independent of the writer
/// (`Send`, owns its handles), so it can run on another thread. Fused after the first error.
pub struct JournalReader<F: JournalFs> {
    fs: F,
    dir: PathBuf,
    group_id: GroupId,
    segments: Vec<SegmentRef>,
    segment_index: usize,
    cursor: Option<Cursor<F::File>>,
    seq_next: u64,
    seq_last: u64,
    scratch: Vec<u8>,
    failed: bool,
    /// Where to start in the segment it names instead of at its first record.
    resume: Option<ReadPosition>,
}

impl<F: JournalFs> JournalReader<F> {
    pub(crate) fn new(
        fs: F,
        dir: PathBuf,
        group_id: GroupId,
        segments: Vec<SegmentRef>,
        seq_from: u64,
        seq_last: u64,
    ) -> JournalReader<F> {
        assert!(seq_from > 0);
        assert!(segments
            .windows(2)
            .all(|pair| pair[0].first_seq < pair[1].first_seq));
        JournalReader {
            fs,
            dir,
            group_id,
            segments,
            segment_index: 0,
            cursor: None,
            seq_next: seq_from,
            seq_last,
            scratch: Vec::new(),
            failed: false,
            resume: None,
        }
    }

    /// Starts at `position` (from [`JournalReader::position`] of an earlier reader of this
    /// directory) when it lies in the segment holding the first record to read, at or before
    /// it; otherwise reads as without it. A stale position cannot pass for a good one: the
    /// record found there must carry the seq the position names, and its CRC must hold.
    pub fn resume_at(mut self, position: ReadPosition) -> JournalReader<F> {
        if position.seq_next <= self.seq_next
            && position.seq_next >= position.segment_first_seq
            && position.offset_bytes >= SEGMENT_HEADER_SIZE_BYTES as u64
        {
            self.resume = Some(position);
        }
        self
    }

    /// Where this reader stands: the next record's segment and offset, once it has read a
    /// record and while its segment goes on.
    pub fn position(&self) -> Option<ReadPosition> {
        let cursor = self.cursor.as_ref()?;
        let segment = self.segments.get(self.segment_index)?;
        Some(ReadPosition {
            segment_first_seq: segment.first_seq,
            offset_bytes: cursor.offset_bytes,
            seq_next: cursor.seq_expected,
        })
    }

    /// The seq the next call to `next` yields, if any remain.
    pub fn seq_next(&self) -> u64 {
        self.seq_next
    }

    /// The last seq this reader yields (the durable seq at creation).
    pub fn seq_last(&self) -> u64 {
        self.seq_last
    }

    fn open_segment(&self, segment: SegmentRef) -> Result<Cursor<F::File>, JournalError> {
        let mut path = join(
            &self.dir,
            &segment_file_name(segment.first_seq, segment.partial),
        );
        let mut opened = self.fs.open(&path);
        // The open segment may have been sealed (renamed) since this reader was created.
        if segment.partial && matches!(&opened, Err(e) if e.kind() == io::ErrorKind::NotFound) {
            path = join(&self.dir, &segment_file_name(segment.first_seq, false));
            opened = self.fs.open(&path);
        }
        let file = opened.map_err(JournalError::io("open journal segment", &path))?;
        check_segment_header(&file, &path, self.group_id, segment.first_seq)?;
        Ok(Cursor {
            file,
            path,
            offset_bytes: SEGMENT_HEADER_SIZE_BYTES as u64,
            seq_expected: segment.first_seq,
        })
    }

    fn next_record(&mut self) -> Result<Option<OwnedRecord>, JournalError> {
        while self.seq_next <= self.seq_last {
            let Some(cursor) = self.cursor.as_mut() else {
                let Some(&segment) = self.segments.get(self.segment_index) else {
                    return Err(JournalError::RecordsMissing {
                        seq_next: self.seq_next,
                        seq_last: self.seq_last,
                    });
                };
                let mut cursor = self.open_segment(segment)?;
                if let Some(resume) = self
                    .resume
                    .take()
                    .filter(|resume| resume.segment_first_seq == segment.first_seq)
                {
                    cursor.offset_bytes = resume.offset_bytes;
                    cursor.seq_expected = resume.seq_next;
                }
                self.cursor = Some(cursor);
                continue;
            };
            let file_size_bytes = cursor
                .file
                .len_bytes()
                .map_err(JournalError::io("stat journal segment", &cursor.path))?;
            let at = read_record_at(
                &cursor.file,
                cursor.offset_bytes,
                file_size_bytes,
                &mut self.scratch,
            )
            .map_err(JournalError::io("read journal segment", &cursor.path))?;
            let (header, size_bytes) = match at {
                RecordAt::Record { header, size_bytes } => (header, size_bytes),
                RecordAt::End => {
                    self.cursor = None;
                    self.segment_index += 1;
                    continue;
                }
                RecordAt::Incomplete => {
                    return Err(JournalError::TruncatedSealed {
                        path: cursor.path.clone(),
                        offset_bytes: cursor.offset_bytes,
                    })
                }
                RecordAt::Corrupt(source) => {
                    return Err(JournalError::CorruptRecord {
                        path: cursor.path.clone(),
                        offset_bytes: cursor.offset_bytes,
                        source,
                    })
                }
            };
            if header.seq != cursor.seq_expected {
                return Err(JournalError::RecordSequence {
                    path: cursor.path.clone(),
                    offset_bytes: cursor.offset_bytes,
                    expected: cursor.seq_expected,
                    found: header.seq,
                });
            }
            cursor.offset_bytes += size_bytes;
            cursor.seq_expected += 1;
            if header.seq < self.seq_next {
                continue;
            }
            assert_eq!(header.seq, self.seq_next);
            self.seq_next += 1;
            let payload = self.scratch[RECORD_HEADER_SIZE_BYTES..].to_vec();
            return Ok(Some(OwnedRecord { header, payload }));
        }
        Ok(None)
    }
}

impl<F: JournalFs> Iterator for JournalReader<F> {
    type Item = Result<OwnedRecord, JournalError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.next_record() {
            Ok(record) => record.map(Ok),
            Err(error) => {
                self.failed = true;
                Some(Err(error))
            }
        }
    }
}

/// A reader over a journal directory that another process or thread is writing: the send
/// process reads production's journal this way while the datatap appends to it.
///
/// `seq_last` must be durable already (the writer's durable watermark, read before this
/// call), so every segment holding `seq_from..=seq_last` exists when the directory is listed;
/// the writer renaming the open segment when it seals it is handled by the reader. The caller
/// must keep the writer from pruning past `seq_from` while the reader is in use.
pub fn read_directory<F: JournalFs>(
    fs: F,
    dir: &Path,
    group_id: GroupId,
    seq_from: u64,
    seq_last: u64,
) -> Result<JournalReader<F>, JournalError> {
    assert!(seq_from > 0, "seq 0 means no record");
    let names = fs
        .list(dir)
        .map_err(JournalError::io("list journal directory", dir))?;
    let mut segments: Vec<SegmentRef> = names
        .iter()
        .filter_map(|name| crate::segment::parse_segment_file_name(name))
        .map(|(first_seq, partial)| SegmentRef { first_seq, partial })
        .collect();
    segments.sort_by_key(|segment| segment.first_seq);
    segments.dedup_by_key(|segment| segment.first_seq);
    let first_seq = segments
        .first()
        .map_or(seq_from, |segment| segment.first_seq);
    if seq_from <= seq_last && seq_from < first_seq {
        return Err(JournalError::SequencePruned {
            requested: seq_from,
            first_seq,
        });
    }
    // Keep the segment holding seq_from and every later one that starts by seq_last.
    let start = segments
        .iter()
        .rposition(|segment| segment.first_seq <= seq_from)
        .unwrap_or(0);
    let segments: Vec<SegmentRef> = segments[start..]
        .iter()
        .copied()
        .filter(|segment| segment.first_seq <= seq_last)
        .collect();
    Ok(JournalReader::new(
        fs,
        dir.to_path_buf(),
        group_id,
        segments,
        seq_from,
        seq_last,
    ))
}

//! An ISO BMFF (MP4 / QuickTime) demuxer for the first H.264 video track: the sample table of `moov/trak/mdia/minf/
//! stbl` turned into one entry per sample (file range, decode and presentation time, key frame), and the decoder
//! configuration of the `avc1`/`avc3` sample entry.
//!
//! Everything comes from user input: every box is checked against its parent's extent, every table against the bytes
//! its box really holds before anything is allocated, every count against [`MediaLimits::max_video_frames`], and all
//! arithmetic on claimed sizes and times is checked; a malformed file is an error, never a panic or a large
//! allocation.
use super::super::{MediaError, MediaLimits};

fn invalid(reason: impl Into<String>) -> MediaError {
    MediaError::VideoDecode { reason: reason.into() }
}

/// A big-endian cursor over one box's payload; every read past its end is an error naming the box.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Cursor<'a> {
    fn new(data: &'a [u8], what: &'static str) -> Self {
        Cursor { data, pos: 0, what }
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], MediaError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or_else(|| invalid(format!("the {} box is truncated", self.what)))?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, MediaError> {
        Ok(self.bytes(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, MediaError> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, MediaError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, MediaError> {
        let b = self.bytes(8)?;
        Ok(u64::from_be_bytes(b.try_into().expect("8 bytes")))
    }

    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    /// A full box's version; the 24 flag bits are returned too.
    fn version_flags(&mut self) -> Result<(u8, u32), MediaError> {
        let v = self.u32()?;
        Ok(((v >> 24) as u8, v & 0xff_ffff))
    }

    /// A table's entry count, refused when the box cannot hold `count` entries of `entry_size` bytes, so that a
    /// claimed count never sizes an allocation by itself.
    fn table_len(&mut self, entry_size: usize) -> Result<usize, MediaError> {
        let count = self.u32()? as usize;
        if count.checked_mul(entry_size).is_none_or(|n| n > self.remaining()) {
            return Err(invalid(format!(
                "the {} box claims {count} entries but holds {} bytes",
                self.what,
                self.remaining()
            )));
        }
        Ok(count)
    }
}

/// The boxes directly inside `data`, as (type, payload).
fn children(data: &[u8]) -> impl Iterator<Item = Result<([u8; 4], &[u8]), MediaError>> {
    let mut pos = 0usize;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || pos >= data.len() {
            return None;
        }
        let item = (|| {
            let rest = &data[pos..];
            if rest.len() < 8 {
                return Err(invalid("a box header is truncated"));
            }
            let size32 = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as u64;
            let kind: [u8; 4] = [rest[4], rest[5], rest[6], rest[7]];
            let (header, size) = match size32 {
                // Extends to the end of the enclosing box (or file).
                0 => (8u64, rest.len() as u64),
                1 => {
                    if rest.len() < 16 {
                        return Err(invalid("a 64-bit box header is truncated"));
                    }
                    (16, u64::from_be_bytes(rest[8..16].try_into().expect("8 bytes")))
                }
                n => (8, n),
            };
            if size < header {
                return Err(invalid(format!("the {} box has an impossible size {size}", fourcc(&kind))));
            }
            if size > rest.len() as u64 {
                return Err(invalid(format!(
                    "the {} box claims {size} bytes but only {} remain",
                    fourcc(&kind),
                    rest.len()
                )));
            }
            pos += size as usize;
            Ok((kind, &rest[header as usize..size as usize]))
        })();
        failed = item.is_err();
        Some(item)
    })
}

fn fourcc(kind: &[u8; 4]) -> String {
    kind.iter().map(|&b| if b.is_ascii_graphic() { b as char } else { '?' }).collect()
}

/// The first child box of type `kind`, if any.
fn child<'a>(data: &'a [u8], kind: &[u8; 4]) -> Result<Option<&'a [u8]>, MediaError> {
    for item in children(data) {
        let (k, payload) = item?;
        if &k == kind {
            return Ok(Some(payload));
        }
    }
    Ok(None)
}

fn required<'a>(data: &'a [u8], kind: &[u8; 4], parent: &str) -> Result<&'a [u8], MediaError> {
    child(data, kind)?.ok_or_else(|| invalid(format!("{parent} has no {} box", fourcc(kind))))
}

/// One coded picture of the track, in decode order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Byte range in the file.
    pub offset: usize,
    pub size: usize,
    /// Decode time in the track's timescale.
    pub dts: i64,
    /// Presentation time (decode time plus the composition offset, minus the edit list's media start).
    pub pts: i64,
    pub sync: bool,
}

/// The H.264 decoder configuration (`avcC`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvcConfig {
    pub profile: u8,
    /// Bytes of each NAL unit's length prefix inside samples (1, 2 or 4).
    pub length_size: usize,
    pub sps: Vec<Vec<u8>>,
    pub pps: Vec<Vec<u8>>,
}

/// The first video track of a file.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoTrack {
    /// Size from the sample entry (the decoder's cropped size is authoritative).
    pub width: u32,
    pub height: u32,
    pub timescale: u32,
    pub avc: AvcConfig,
    /// In decode order.
    pub samples: Vec<Sample>,
    /// Sum of the sample durations (stts), in the timescale.
    pub duration: u64,
}

impl VideoTrack {
    /// FFmpeg's `avg_frame_rate` for an MP4 track: sample count x timescale / summed sample durations, reduced, as
    /// (numerator, denominator); `None` when the durations sum to 0.
    pub fn average_rate(&self) -> Option<(u64, u64)> {
        if self.duration == 0 || self.samples.is_empty() {
            return None;
        }
        let num = u128::from(self.timescale) * self.samples.len() as u128;
        let den = u128::from(self.duration);
        let g = gcd(num, den);
        Some(((num / g) as u64, (den / g) as u64))
    }
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

/// The first video (`vide`) track of an MP4 file. Non-H.264 video tracks are refused with the codec's name.
pub fn parse(file: &[u8], limits: &MediaLimits) -> Result<VideoTrack, MediaError> {
    // An ISO BMFF file starts with a box whose type is one of these; anything else is not an MP4.
    let starts_like_mp4 = file.len() >= 8
        && matches!(&file[4..8], b"ftyp" | b"moov" | b"mdat" | b"free" | b"skip" | b"wide" | b"pnot" | b"styp");
    if !starts_like_mp4 {
        return Err(MediaError::NotMp4);
    }
    let moov = required(file, b"moov", "the file")?;
    let mut unsupported = None;
    for item in children(moov) {
        let (kind, trak) = item?;
        if &kind != b"trak" {
            continue;
        }
        let mdia = required(trak, b"mdia", "a trak")?;
        let hdlr = required(mdia, b"hdlr", "an mdia")?;
        if hdlr.get(8..12) != Some(b"vide") {
            continue;
        }
        match parse_video_trak(trak, mdia, file, limits) {
            Err(MediaError::UnsupportedVideo { reason }) => unsupported = Some(reason),
            other => return other,
        }
    }
    Err(match unsupported {
        Some(reason) => MediaError::UnsupportedVideo { reason },
        None => invalid("the file has no video track"),
    })
}

fn parse_video_trak(trak: &[u8], mdia: &[u8], file: &[u8], limits: &MediaLimits) -> Result<VideoTrack, MediaError> {
    let mut mdhd = Cursor::new(required(mdia, b"mdhd", "an mdia")?, "mdhd");
    let (version, _) = mdhd.version_flags()?;
    let timescale = if version == 1 {
        mdhd.bytes(16)?;
        mdhd.u32()?
    } else {
        mdhd.bytes(8)?;
        mdhd.u32()?
    };
    if timescale == 0 {
        return Err(invalid("the video track's timescale (mdhd) is 0"));
    }
    let minf = required(mdia, b"minf", "an mdia")?;
    let stbl = required(minf, b"stbl", "a minf")?;
    let (width, height, avc) = sample_entry(required(stbl, b"stsd", "an stbl")?)?;

    let sizes = sample_sizes(stbl, limits)?;
    let n = sizes.len();
    let offsets = sample_offsets(stbl, &sizes)?;
    let durations = expand_runs(required(stbl, b"stts", "an stbl")?, "stts", n, false)?;
    let composition = match child(stbl, b"ctts")? {
        Some(ctts) => expand_runs(ctts, "ctts", n, true)?,
        None => vec![0; n],
    };
    let sync = match child(stbl, b"stss")? {
        Some(stss) => {
            let mut c = Cursor::new(stss, "stss");
            c.version_flags()?;
            let count = c.table_len(4)?;
            let mut sync = vec![false; n];
            for _ in 0..count {
                let i = c.u32()? as usize;
                // 1-based; entries past the end are ignored as FFmpeg does.
                if let Some(s) = i.checked_sub(1).and_then(|i| sync.get_mut(i)) {
                    *s = true;
                }
            }
            sync
        }
        None => vec![true; n],
    };
    let media_start = edit_media_start(trak)?;

    let mut samples = Vec::with_capacity(n);
    let mut dts: i64 = 0;
    let mut duration: u64 = 0;
    for i in 0..n {
        let (offset, size) = (offsets[i], sizes[i]);
        if offset.checked_add(size).is_none_or(|end| end > file.len() as u64) {
            return Err(invalid(format!(
                "sample {i} lies outside the file (bytes {offset}..{}, file of {})",
                offset.saturating_add(size),
                file.len()
            )));
        }
        let pts = dts
            .checked_add(composition[i])
            .and_then(|p| p.checked_sub(media_start))
            .ok_or_else(|| invalid("sample times overflow"))?;
        samples.push(Sample { offset: offset as usize, size: size as usize, dts, pts, sync: sync[i] });
        dts = dts.checked_add(durations[i]).ok_or_else(|| invalid("sample times overflow"))?;
        duration = duration.checked_add(durations[i] as u64).ok_or_else(|| invalid("sample times overflow"))?;
    }
    Ok(VideoTrack { width, height, timescale, avc, samples, duration })
}

/// The sample description: size and H.264 configuration of the first entry.
fn sample_entry(stsd: &[u8]) -> Result<(u32, u32, AvcConfig), MediaError> {
    let mut c = Cursor::new(stsd, "stsd");
    c.version_flags()?;
    if c.u32()? == 0 {
        return Err(invalid("the stsd box has no sample entry"));
    }
    let (kind, entry) = children(&stsd[c.pos..]).next().ok_or_else(|| invalid("the stsd box is truncated"))??;
    match &kind {
        b"avc1" | b"avc3" => {}
        b"hvc1" | b"hev1" => return Err(unsupported_codec("H.265/HEVC")),
        b"av01" => return Err(unsupported_codec("AV1")),
        b"vp09" | b"vp08" => return Err(unsupported_codec("VP8/VP9")),
        b"mp4v" => return Err(unsupported_codec("MPEG-4 Part 2")),
        other => return Err(unsupported_codec(&format!("'{}'", fourcc(other)))),
    }
    // VisualSampleEntry: 6 reserved + 2 data_reference_index + 16 pre-defined/reserved, then width and height,
    // then 50 more bytes before the child boxes.
    let mut v = Cursor::new(entry, "avc1");
    v.bytes(24)?;
    let width = u32::from(v.u16()?);
    let height = u32::from(v.u16()?);
    v.bytes(50)?;
    let avcc = required(&entry[v.pos..], b"avcC", "the avc1 sample entry")?;
    Ok((width, height, parse_avcc(avcc)?))
}

fn unsupported_codec(name: &str) -> MediaError {
    MediaError::UnsupportedVideo { reason: format!("the video codec is {name}; only H.264 (AVC) video is supported") }
}

/// AVCDecoderConfigurationRecord.
fn parse_avcc(avcc: &[u8]) -> Result<AvcConfig, MediaError> {
    let mut c = Cursor::new(avcc, "avcC");
    if c.u8()? != 1 {
        return Err(invalid("unknown avcC version"));
    }
    let profile = c.u8()?;
    c.bytes(2)?; // compatibility, level
    let length_size = usize::from(c.u8()? & 3) + 1;
    if length_size == 3 {
        return Err(invalid("avcC NAL length size of 3 bytes"));
    }
    let n_sps = usize::from(c.u8()? & 0x1f);
    let sps = parameter_sets(&mut c, n_sps)?;
    let n_pps = usize::from(c.u8()?);
    let pps = parameter_sets(&mut c, n_pps)?;
    if sps.is_empty() || pps.is_empty() {
        return Err(invalid("the avcC box has no SPS or no PPS"));
    }
    Ok(AvcConfig { profile, length_size, sps, pps })
}

/// `count` parameter sets, each a 16-bit length and the NAL unit.
fn parameter_sets(c: &mut Cursor<'_>, count: usize) -> Result<Vec<Vec<u8>>, MediaError> {
    (0..count)
        .map(|_| {
            let len = usize::from(c.u16()?);
            Ok(c.bytes(len)?.to_vec())
        })
        .collect()
}

/// Sample sizes from stsz or stz2.
fn sample_sizes(stbl: &[u8], limits: &MediaLimits) -> Result<Vec<u64>, MediaError> {
    let too_many = |n: u64| MediaError::TooManyFrames { frames: n, limit: limits.max_video_frames };
    if let Some(stsz) = child(stbl, b"stsz")? {
        let mut c = Cursor::new(stsz, "stsz");
        c.version_flags()?;
        let fixed = c.u32()?;
        let count = c.u32()?;
        if u64::from(count) > limits.max_video_frames {
            return Err(too_many(u64::from(count)));
        }
        if fixed != 0 {
            return Ok(vec![u64::from(fixed); count as usize]);
        }
        if (count as usize).saturating_mul(4) > c.remaining() {
            return Err(invalid(format!("the stsz box claims {count} sizes but holds {} bytes", c.remaining())));
        }
        return (0..count).map(|_| c.u32().map(u64::from)).collect();
    }
    let stz2 = child(stbl, b"stz2")?.ok_or_else(|| invalid("the stbl box has neither stsz nor stz2"))?;
    let mut c = Cursor::new(stz2, "stz2");
    c.version_flags()?;
    c.bytes(3)?;
    let field_bits = c.u8()?;
    let count = c.u32()?;
    if u64::from(count) > limits.max_video_frames {
        return Err(too_many(u64::from(count)));
    }
    let bytes_needed = match field_bits {
        4 => (count as usize).div_ceil(2),
        8 => count as usize,
        16 => count as usize * 2,
        _ => return Err(invalid(format!("stz2 field size {field_bits}"))),
    };
    let table = c.bytes(bytes_needed)?;
    Ok((0..count as usize)
        .map(|i| match field_bits {
            4 => u64::from(if i % 2 == 0 { table[i / 2] >> 4 } else { table[i / 2] & 15 }),
            8 => u64::from(table[i]),
            _ => u64::from(u16::from_be_bytes([table[2 * i], table[2 * i + 1]])),
        })
        .collect())
}

/// File offset of every sample: chunk offsets (stco/co64) and the sample-to-chunk runs (stsc).
fn sample_offsets(stbl: &[u8], sizes: &[u64]) -> Result<Vec<u64>, MediaError> {
    let chunks: Vec<u64> = if let Some(stco) = child(stbl, b"stco")? {
        let mut c = Cursor::new(stco, "stco");
        c.version_flags()?;
        let count = c.table_len(4)?;
        (0..count).map(|_| c.u32().map(u64::from)).collect::<Result<_, _>>()?
    } else {
        let co64 = child(stbl, b"co64")?.ok_or_else(|| invalid("the stbl box has neither stco nor co64"))?;
        let mut c = Cursor::new(co64, "co64");
        c.version_flags()?;
        let count = c.table_len(8)?;
        (0..count).map(|_| c.u64()).collect::<Result<_, _>>()?
    };
    let mut c = Cursor::new(required(stbl, b"stsc", "an stbl")?, "stsc");
    c.version_flags()?;
    let count = c.table_len(12)?;
    let mut runs = Vec::with_capacity(count);
    for _ in 0..count {
        let first_chunk = c.u32()?;
        let per_chunk = c.u32()?;
        c.u32()?; // sample description index
        if first_chunk == 0 || runs.last().is_some_and(|&(f, _)| first_chunk <= f) {
            return Err(invalid("the stsc box's chunk numbers are not increasing from 1"));
        }
        runs.push((first_chunk, per_chunk));
    }
    let n = sizes.len();
    let mut offsets = Vec::with_capacity(n);
    'runs: for (r, &(first, per_chunk)) in runs.iter().enumerate() {
        let last = runs.get(r + 1).map_or(chunks.len() as u64, |&(next, _)| u64::from(next) - 1);
        for chunk in u64::from(first)..=last {
            let Some(&chunk_offset) = chunks.get(chunk as usize - 1) else { break 'runs };
            let mut offset = chunk_offset;
            for _ in 0..per_chunk {
                let Some(&size) = sizes.get(offsets.len()) else { break 'runs };
                offsets.push(offset);
                offset = offset.checked_add(size).ok_or_else(|| invalid("sample offsets overflow"))?;
            }
        }
    }
    if offsets.len() < n {
        return Err(invalid(format!("the chunk tables place {} of {n} samples", offsets.len())));
    }
    Ok(offsets)
}

/// Per-sample values of a run-length table (stts: durations; ctts: composition offsets, signed in version 1 and
/// read as signed in version 0 too, as FFmpeg does).
fn expand_runs(data: &[u8], what: &'static str, n: usize, signed: bool) -> Result<Vec<i64>, MediaError> {
    let mut c = Cursor::new(data, what);
    c.version_flags()?;
    let count = c.table_len(8)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..count {
        let run = c.u32()? as usize;
        let raw = c.u32()?;
        let value = if signed { i64::from(raw as i32) } else { i64::from(raw) };
        let take = run.min(n - out.len());
        out.extend(std::iter::repeat_n(value, take));
        if out.len() == n {
            break;
        }
    }
    if out.len() < n {
        // A table that covers fewer samples than stsz: the rest repeat the last value (0 when empty).
        let last = out.last().copied().unwrap_or(0);
        out.resize(n, last);
    }
    Ok(out)
}

/// The media time at which presentation starts, from an edit list of at most one empty edit followed by one
/// normal edit (what encoders write to cancel the B-frame delay); 0 without an edit list. Other edit lists are
/// refused rather than played wrongly.
fn edit_media_start(trak: &[u8]) -> Result<i64, MediaError> {
    let Some(edts) = child(trak, b"edts")? else { return Ok(0) };
    let Some(elst) = child(edts, b"elst")? else { return Ok(0) };
    let mut c = Cursor::new(elst, "elst");
    let (version, _) = c.version_flags()?;
    let count = c.table_len(if version == 1 { 20 } else { 12 })?;
    let mut starts = Vec::new();
    for _ in 0..count {
        let (_duration, media_time) =
            if version == 1 { (c.u64()?, c.u64()? as i64) } else { (u64::from(c.u32()?), i64::from(c.u32()? as i32)) };
        c.u32()?; // media rate
        if media_time != -1 {
            starts.push(media_time);
        }
    }
    match starts.as_slice() {
        [] => Ok(0),
        [start] if *start >= 0 => Ok(*start),
        _ => Err(MediaError::UnsupportedVideo { reason: "edit lists with more than one media segment".into() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxed(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut b = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn box_headers_are_bounds_checked() {
        let two = [boxed(b"free", b"ab"), boxed(b"moov", b"")].concat();
        let kinds: Vec<[u8; 4]> = children(&two).map(|r| r.unwrap().0).collect();
        assert_eq!(kinds, vec![*b"free", *b"moov"]);
        // Size past the end, size smaller than the header, a cut header, a cut 64-bit size.
        for bad in [
            &[0, 0, 0, 99, b'f', b'r', b'e', b'e'][..],
            &[0, 0, 0, 4, b'f', b'r', b'e', b'e'],
            &[0, 0, 1],
            &[0, 0, 0, 1, b'm', b'd', b'a', b't', 0, 0],
        ] {
            assert!(children(bad).any(|r| r.is_err()), "{bad:?}");
        }
        // Size 0: to the end.
        let open = [0, 0, 0, 0, b'm', b'd', b'a', b't', 1, 2, 3];
        assert_eq!(children(&open).next().unwrap().unwrap().1, &[1, 2, 3]);
    }

    #[test]
    fn claimed_table_sizes_never_allocate() {
        // An stts claiming 2^32-1 entries in 8 bytes of payload.
        let mut stts = vec![0u8; 4];
        stts.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(expand_runs(&stts, "stts", 10, false).is_err());
        // A run longer than the sample count is cut to it.
        let mut stts = vec![0u8; 4];
        stts.extend_from_slice(&1u32.to_be_bytes());
        stts.extend_from_slice(&u32::MAX.to_be_bytes());
        stts.extend_from_slice(&512u32.to_be_bytes());
        assert_eq!(expand_runs(&stts, "stts", 3, false).unwrap(), vec![512; 3]);
        // stsz with a fixed size and a count over the frame limit.
        let limits = MediaLimits { max_video_frames: 100, ..Default::default() };
        let stsz = boxed(b"stsz", &[0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 101]);
        assert!(matches!(sample_sizes(&stsz, &limits), Err(MediaError::TooManyFrames { frames: 101, limit: 100 })));
    }

    #[test]
    fn not_mp4() {
        assert!(matches!(parse(b"RIFF....AVI LIST", &MediaLimits::default()), Err(MediaError::NotMp4)));
        // An ftyp but no moov.
        let file = boxed(b"ftyp", b"isom\0\0\0\0");
        assert!(matches!(parse(&file, &MediaLimits::default()), Err(MediaError::VideoDecode { .. })));
    }
}

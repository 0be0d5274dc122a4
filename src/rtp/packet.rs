//! In-place RTP header view and rewrite (RFC 3550 §5.1).
//!
//! Owns the validation of one datagram as RTP and the accessors a relay needs, read-only
//! ([`RtpView`]) and in-place ([`RtpViewMut`]). It must never allocate, never panic on wire
//! bytes and never copy a payload: the relay rewrites headers in the buffer it received into.

/// Fixed RTP header size (RFC 3550 §5.1), before any CSRC or extension.
pub const FIXED_HEADER_LEN: usize = 12;

/// Why a datagram is not a usable RTP packet. Each maps to a drop counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    #[error("shorter than an RTP header")]
    TooShort,
    #[error("RTP version is not 2")]
    BadVersion,
    #[error("padding length is zero or exceeds the payload")]
    BadPadding,
    #[error("CSRC list runs past the end of the packet")]
    CsrcOverflow,
    #[error("header extension runs past the end of the packet")]
    ExtensionOverflow,
}

/// Offsets found by validation; shared by the read-only and the mutable view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    /// Fixed header + CSRC list + extension (header and body).
    header_len: usize,
    /// End of the payload: the buffer length minus the padding.
    payload_end: usize,
}

/// Validates RFC 3550 §5.1: version, CSRC count, §5.3.1 extension length and padding.
///
/// The checks run in header order, so a packet broken in several ways reports the first break
/// a receiver walking the header would hit.
fn validate(buf: &[u8]) -> Result<Layout, RtpError> {
    let Some(fixed) = buf.first_chunk::<FIXED_HEADER_LEN>() else {
        return Err(RtpError::TooShort);
    };
    if fixed[0] >> 6 != 2 {
        return Err(RtpError::BadVersion);
    }
    let len = buf.len();
    let csrc_count = usize::from(fixed[0] & 0x0f);
    let mut header_len = FIXED_HEADER_LEN + 4 * csrc_count;
    if header_len > len {
        return Err(RtpError::CsrcOverflow);
    }
    if fixed[0] & 0x10 != 0 {
        // RFC 3550 §5.3.1: 16-bit profile id, 16-bit length in 32-bit words, not counting itself.
        let words = match (buf.get(header_len + 2), buf.get(header_len + 3)) {
            (Some(&hi), Some(&lo)) => usize::from(u16::from_be_bytes([hi, lo])),
            _ => return Err(RtpError::ExtensionOverflow),
        };
        header_len += 4 + 4 * words;
        if header_len > len {
            return Err(RtpError::ExtensionOverflow);
        }
    }
    let mut payload_end = len;
    if fixed[0] & 0x20 != 0 {
        // RFC 3550 §5.1: the last octet counts the padding octets, itself included, so it is at
        // least 1 and the padding cannot reach back into the header.
        let count = usize::from(buf.last().copied().unwrap_or(0));
        if len == header_len || count == 0 || count > len - header_len {
            return Err(RtpError::BadPadding);
        }
        payload_end = len - count;
    }
    Ok(Layout {
        header_len,
        payload_end,
    })
}

/// A validated, borrowed view of one RTP packet.
#[derive(Clone, Copy, Debug)]
pub struct RtpView<'a> {
    buf: &'a [u8],
    fixed: &'a [u8; FIXED_HEADER_LEN],
    layout: Layout,
}

impl<'a> RtpView<'a> {
    /// Validates `buf` as one RTP packet (RFC 3550 §5.1). Never allocates or panics.
    pub fn parse(buf: &'a [u8]) -> Result<RtpView<'a>, RtpError> {
        let layout = validate(buf)?;
        let fixed = buf
            .first_chunk::<FIXED_HEADER_LEN>()
            .ok_or(RtpError::TooShort)?;
        Ok(RtpView { buf, fixed, layout })
    }

    pub fn marker(&self) -> bool {
        self.fixed[1] & 0x80 != 0
    }

    pub fn payload_type(&self) -> u8 {
        self.fixed[1] & 0x7f
    }

    pub fn sequence(&self) -> u16 {
        u16::from_be_bytes([self.fixed[2], self.fixed[3]])
    }

    pub fn timestamp(&self) -> u32 {
        u32::from_be_bytes([self.fixed[4], self.fixed[5], self.fixed[6], self.fixed[7]])
    }

    pub fn ssrc(&self) -> u32 {
        u32::from_be_bytes([self.fixed[8], self.fixed[9], self.fixed[10], self.fixed[11]])
    }

    /// Number of contributing sources (CC field), 0 to 15.
    pub fn csrc_count(&self) -> u8 {
        self.fixed[0] & 0x0f
    }

    /// The `index`th CSRC, if the CSRC list has one.
    pub fn csrc(&self, index: usize) -> Option<u32> {
        if index >= usize::from(self.csrc_count()) {
            return None;
        }
        let at = FIXED_HEADER_LEN + 4 * index;
        let bytes = self.buf.get(at..at + 4)?.first_chunk::<4>()?;
        Some(u32::from_be_bytes(*bytes))
    }

    /// Header extension (RFC 3550 §5.3.1): the profile-defined 16 bits and the body.
    pub fn extension(&self) -> Option<(u16, &'a [u8])> {
        if self.fixed[0] & 0x10 == 0 {
            return None;
        }
        let at = FIXED_HEADER_LEN + 4 * usize::from(self.csrc_count());
        let profile = u16::from_be_bytes([*self.buf.get(at)?, *self.buf.get(at + 1)?]);
        Some((profile, self.buf.get(at + 4..self.layout.header_len)?))
    }

    /// Whether the P bit is set (the payload is followed by padding).
    pub fn has_padding(&self) -> bool {
        self.fixed[0] & 0x20 != 0
    }

    /// Number of padding octets after the payload (0 without the P bit).
    pub fn padding_len(&self) -> usize {
        self.buf.len() - self.layout.payload_end
    }

    /// Bytes before the payload: fixed header, CSRCs and extension.
    pub fn header_len(&self) -> usize {
        self.layout.header_len
    }

    /// Payload without padding.
    pub fn payload(&self) -> &'a [u8] {
        self.buf
            .get(self.layout.header_len..self.layout.payload_end)
            .unwrap_or(&[])
    }

    /// The whole packet as received.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }
}

/// A validated, mutable view of one RTP packet: header rewrite and payload edits in place,
/// for a relay that forwards the buffer it received.
#[derive(Debug)]
pub struct RtpViewMut<'a> {
    buf: &'a mut [u8],
    layout: Layout,
}

impl<'a> RtpViewMut<'a> {
    /// Validates `buf` exactly as [`RtpView::parse`] does.
    pub fn parse(buf: &'a mut [u8]) -> Result<RtpViewMut<'a>, RtpError> {
        let layout = validate(buf)?;
        Ok(RtpViewMut { buf, layout })
    }

    /// Read-only view of the packet as it stands now.
    pub fn view(&self) -> RtpView<'_> {
        // Validation only depends on octet 0 and the lengths, which the setters never change,
        // so the layout computed at parse time still holds.
        let fixed = self
            .buf
            .first_chunk::<FIXED_HEADER_LEN>()
            .unwrap_or(&[0; FIXED_HEADER_LEN]);
        RtpView {
            buf: self.buf,
            fixed,
            layout: self.layout,
        }
    }

    fn fixed_mut(&mut self) -> Option<&mut [u8; FIXED_HEADER_LEN]> {
        self.buf.first_chunk_mut::<FIXED_HEADER_LEN>()
    }

    pub fn set_marker(&mut self, marker: bool) {
        if let Some(h) = self.fixed_mut() {
            h[1] = (h[1] & 0x7f) | if marker { 0x80 } else { 0 };
        }
    }

    /// Sets the 7-bit payload type; the high bit of `pt` is ignored.
    pub fn set_payload_type(&mut self, pt: u8) {
        if let Some(h) = self.fixed_mut() {
            h[1] = (h[1] & 0x80) | (pt & 0x7f);
        }
    }

    pub fn set_sequence(&mut self, seq: u16) {
        if let Some(h) = self.fixed_mut() {
            [h[2], h[3]] = seq.to_be_bytes();
        }
    }

    pub fn set_timestamp(&mut self, ts: u32) {
        if let Some(h) = self.fixed_mut() {
            [h[4], h[5], h[6], h[7]] = ts.to_be_bytes();
        }
    }

    pub fn set_ssrc(&mut self, ssrc: u32) {
        if let Some(h) = self.fixed_mut() {
            [h[8], h[9], h[10], h[11]] = ssrc.to_be_bytes();
        }
    }

    /// Payload without padding, writable (e.g. to overwrite audio with masking).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let Layout {
            header_len,
            payload_end,
        } = self.layout;
        self.buf.get_mut(header_len..payload_end).unwrap_or(&mut [])
    }

    /// The whole packet buffer.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf
    }
}

/// Writes a plain 12-byte RTP header (version 2, no padding, extension or CSRC) into `out`.
/// Returns 12, or 0 if `out` is too short.
pub fn write_header(out: &mut [u8], marker: bool, pt: u8, seq: u16, ts: u32, ssrc: u32) -> usize {
    let Some(h) = out.first_chunk_mut::<FIXED_HEADER_LEN>() else {
        return 0;
    };
    h[0] = 2 << 6;
    h[1] = (pt & 0x7f) | if marker { 0x80 } else { 0 };
    [h[2], h[3]] = seq.to_be_bytes();
    [h[4], h[5], h[6], h[7]] = ts.to_be_bytes();
    [h[8], h[9], h[10], h[11]] = ssrc.to_be_bytes();
    FIXED_HEADER_LEN
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn packet(first: u8, tail: &[u8]) -> Vec<u8> {
        let mut p = vec![
            first,
            0x80 | 8,
            0x12,
            0x34,
            0,
            0,
            0x01,
            0x40,
            0xde,
            0xad,
            0xbe,
            0xef,
        ];
        p.extend_from_slice(tail);
        p
    }

    #[test]
    fn plain_packet_fields() {
        let p = packet(0x80, &[1, 2, 3]);
        let v = RtpView::parse(&p).unwrap();
        assert!(v.marker());
        assert_eq!(v.payload_type(), 8);
        assert_eq!(v.sequence(), 0x1234);
        assert_eq!(v.timestamp(), 320);
        assert_eq!(v.ssrc(), 0xdead_beef);
        assert_eq!(v.csrc_count(), 0);
        assert_eq!(v.header_len(), 12);
        assert_eq!(v.payload(), &[1, 2, 3]);
        assert_eq!(v.padding_len(), 0);
        assert_eq!(v.extension(), None);
        assert_eq!(v.as_bytes(), &p[..]);
    }

    #[test]
    fn csrc_extension_and_padding_are_skipped() {
        // CC=2, X, P: 2 CSRCs, extension of 1 word, payload [9, 9], 3 padding octets.
        let mut tail = vec![0, 0, 0, 1, 0, 0, 0, 2, 0xbe, 0xde, 0, 1, 7, 7, 7, 7, 9, 9];
        tail.extend_from_slice(&[0, 0, 3]);
        let p = packet(0x80 | 0x20 | 0x10 | 2, &tail);
        let v = RtpView::parse(&p).unwrap();
        assert_eq!(v.csrc_count(), 2);
        assert_eq!(v.csrc(0), Some(1));
        assert_eq!(v.csrc(1), Some(2));
        assert_eq!(v.csrc(2), None);
        assert_eq!(v.extension(), Some((0xbede, &[7u8, 7, 7, 7][..])));
        assert_eq!(v.header_len(), 12 + 8 + 8);
        assert_eq!(v.payload(), &[9, 9]);
        assert!(v.has_padding());
        assert_eq!(v.padding_len(), 3);
    }

    #[test]
    fn each_malformation_has_its_error() {
        assert_eq!(RtpView::parse(&[0x80; 11]).unwrap_err(), RtpError::TooShort);
        assert_eq!(
            RtpView::parse(&packet(0x40, &[])).unwrap_err(),
            RtpError::BadVersion
        );
        assert_eq!(
            RtpView::parse(&packet(0x81, &[0, 0, 0])).unwrap_err(),
            RtpError::CsrcOverflow
        );
        assert_eq!(
            RtpView::parse(&packet(0x90, &[0, 0, 0])).unwrap_err(),
            RtpError::ExtensionOverflow
        );
        assert_eq!(
            RtpView::parse(&packet(0x90, &[0, 0, 0, 1, 1, 2, 3])).unwrap_err(),
            RtpError::ExtensionOverflow
        );
        // Padding: zero count, count past the payload, P bit with no payload at all.
        assert_eq!(
            RtpView::parse(&packet(0xa0, &[1, 0])).unwrap_err(),
            RtpError::BadPadding
        );
        assert_eq!(
            RtpView::parse(&packet(0xa0, &[1, 3])).unwrap_err(),
            RtpError::BadPadding
        );
        assert_eq!(
            RtpView::parse(&packet(0xa0, &[])).unwrap_err(),
            RtpError::BadPadding
        );
        // Padding that is exactly the whole payload is legal: an empty payload.
        let p = packet(0xa0, &[0, 2]);
        assert_eq!(RtpView::parse(&p).unwrap().payload(), &[] as &[u8]);
    }

    #[test]
    fn write_header_round_trips_and_refuses_short_buffers() {
        let mut out = [0u8; 12];
        assert_eq!(write_header(&mut out[..11], true, 0, 1, 2, 3), 0);
        assert_eq!(
            write_header(&mut out, true, 0xff, 65535, 0xffff_fff0, 7),
            12
        );
        let v = RtpView::parse(&out).unwrap();
        assert!(v.marker());
        assert_eq!(v.payload_type(), 0x7f);
        assert_eq!(v.sequence(), 65535);
        assert_eq!(v.timestamp(), 0xffff_fff0);
        assert_eq!(v.ssrc(), 7);
        assert_eq!(v.payload(), &[] as &[u8]);
    }

    #[test]
    fn setters_rewrite_only_their_field() {
        let orig = packet(0x80 | 0x20 | 1, &[0, 0, 0, 5, 1, 2, 3, 2]);
        let mut p = orig.clone();
        let mut m = RtpViewMut::parse(&mut p).unwrap();
        m.set_sequence(0xbeef);
        m.set_timestamp(0x0102_0304);
        m.set_ssrc(0x0a0b_0c0d);
        m.set_payload_type(0x80 | 101);
        m.set_marker(false);
        m.payload_mut().copy_from_slice(&[0xd5, 0xd5]);
        let v = m.view();
        assert_eq!(v.sequence(), 0xbeef);
        assert_eq!(v.timestamp(), 0x0102_0304);
        assert_eq!(v.ssrc(), 0x0a0b_0c0d);
        assert_eq!(v.payload_type(), 101);
        assert!(!v.marker());
        assert_eq!(v.csrc(0), Some(5));
        assert_eq!(v.payload(), &[0xd5, 0xd5]);
        // Octet 0, the CSRC and the padding are untouched.
        assert_eq!(p[0], orig[0]);
        assert_eq!(p[12..16], orig[12..16]);
        assert_eq!(p[18..], orig[18..]);
        let mut m = RtpViewMut::parse(&mut p).unwrap();
        m.set_marker(true);
        assert!(m.view().marker());
        assert_eq!(m.view().payload_type(), 101);
    }

    /// Marker, payload type, sequence, timestamp, SSRC, CSRC count, payload.
    type Fields = (bool, u8, u16, u32, u32, u8, Vec<u8>);

    /// What rtp-types says about the same bytes, in our terms.
    fn reference(buf: &[u8]) -> Option<Fields> {
        let p = rtp_types::RtpPacket::parse(buf).ok()?;
        Some((
            p.marker_bit(),
            p.payload_type(),
            p.sequence_number(),
            p.timestamp(),
            p.ssrc(),
            p.n_csrcs(),
            p.payload().to_vec(),
        ))
    }

    fn ours(buf: &[u8]) -> Option<Fields> {
        let v = RtpView::parse(buf).ok()?;
        Some((
            v.marker(),
            v.payload_type(),
            v.sequence(),
            v.timestamp(),
            v.ssrc(),
            v.csrc_count(),
            v.payload().to_vec(),
        ))
    }

    /// Packets that are RTP-shaped with random flags, counts and lengths that are sometimes
    /// consistent and sometimes not, so both the accept and the reject paths are exercised.
    fn plausible() -> impl Strategy<Value = Vec<u8>> {
        (
            0u8..4,
            any::<bool>(),
            any::<bool>(),
            0u8..16,
            any::<[u8; 11]>(),
            0usize..8,
            prop::collection::vec(any::<u8>(), 0..64),
            0u8..8,
            any::<bool>(),
        )
            .prop_map(
                |(version, pad, ext, cc, rest, ext_words, payload, pad_count, truncate)| {
                    let mut p =
                        vec![(version << 6) | (u8::from(pad) << 5) | (u8::from(ext) << 4) | cc];
                    p.extend_from_slice(&rest);
                    for i in 0..cc {
                        p.extend_from_slice(&u32::from(i).to_be_bytes());
                    }
                    if ext {
                        p.extend_from_slice(&[0xbe, 0xde, 0, ext_words as u8]);
                        p.extend(std::iter::repeat_n(0x11, 4 * ext_words));
                    }
                    p.extend_from_slice(&payload);
                    if pad {
                        p.extend(std::iter::repeat_n(
                            0,
                            usize::from(pad_count.saturating_sub(1)),
                        ));
                        p.push(pad_count);
                    }
                    if truncate && !p.is_empty() {
                        let cut = usize::from(rest[0]) % p.len();
                        p.truncate(cut);
                    }
                    p
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn agrees_with_rtp_types_on_plausible_packets(p in plausible()) {
            prop_assert_eq!(ours(&p), reference(&p));
        }

        #[test]
        fn agrees_with_rtp_types_on_arbitrary_bytes(p in prop::collection::vec(any::<u8>(), 0..80)) {
            prop_assert_eq!(ours(&p), reference(&p));
        }

        #[test]
        fn arbitrary_bytes_never_panic(mut p in prop::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(v) = RtpView::parse(&p) {
                let _ = (v.marker(), v.payload_type(), v.sequence(), v.timestamp(), v.ssrc());
                let _ = (v.csrc(0), v.csrc(15), v.extension(), v.padding_len());
                prop_assert!(v.header_len() + v.payload().len() + v.padding_len() == p.len());
            }
            if let Ok(mut m) = RtpViewMut::parse(&mut p) {
                m.set_sequence(1);
                m.set_timestamp(2);
                m.set_ssrc(3);
                m.set_payload_type(4);
                m.set_marker(true);
                m.payload_mut().fill(0);
                prop_assert!(RtpView::parse(m.as_bytes()).is_ok());
            }
        }
    }
}

"""The sans-IO codecs: ``Decoder`` / ``Encoder`` for every framing spec."""

from __future__ import annotations

from typing import List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import framelink
from framelink import (
    ChecksumError,
    DecodeError,
    Decoder,
    EncodeError,
    Encoder,
    FrameTooLarge,
    MalformedFrame,
    SpecError,
    TruncatedFrame,
)

ANY = st.binary(max_size=300)
NO_NEWLINE = st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))
NO_NUL = st.binary(max_size=300).map(lambda b: b.replace(b"\x00", b""))
NO_CRLF_NUL = st.binary(max_size=300).map(
    lambda b: b.replace(b"\x00", b"").replace(b"\r", b"").replace(b"\n", b"")
)

#: spec -> strategy for payloads that framing can carry.
SPECS = {
    "length:4": ANY,
    "length:4,le": ANY,
    "length:2,le": ANY,
    "length:1": st.binary(max_size=255),
    "length:3,le": ANY,
    "length:8": ANY,
    "length:2,adjust=-2": ANY,  # the field counts itself (Netty's LengthFieldPrepender(2, true))
    "varint": ANY,
    "varint,max=1MiB": ANY,
    "line": NO_NEWLINE,
    "line,crlf": NO_NEWLINE,
    "delim:00": NO_NUL,
    'delim:"\\r\\n"|00': NO_CRLF_NUL,
    "fixed:4": st.binary(min_size=4, max_size=4),
    "fixed:1": st.binary(min_size=1, max_size=1),
    "netstring": ANY,
    "magic:cafe,crc=crc32c": ANY,
    "magic:cafe,len=2,crc=crc32": ANY,
    "magic:cafe,crc=none,le": ANY,
}

#: Specs only decoded (the encoder refuses a length field with bytes before it).
DECODE_ONLY = [
    "length:2,offset=1,adjust=-3,strip=3",
    "length:3,offset=2,strip=0",
    "length:3,adjust=2,strip=0",
]


def chunked(data: bytes, cuts: List[int]) -> List[bytes]:
    """``data`` cut at the (sorted, deduplicated) offsets ``cuts``."""
    points = sorted({c % (len(data) + 1) for c in cuts}) if data else []
    out: List[bytes] = []
    prev = 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return out


def feed_via_buffer(decoder: Decoder, chunk: bytes) -> List[bytes]:
    """The ``recv_into`` path: copy into ``get_buffer``'s view, then ``buffer_updated``."""
    frames: List[bytes] = []
    view_pos = 0
    while True:
        view = decoder.get_buffer(len(chunk) - view_pos or 1)
        n = min(len(view), len(chunk) - view_pos)
        assert n > 0 or view_pos == len(chunk)
        view[:n] = chunk[view_pos : view_pos + n]
        frames += decoder.buffer_updated(n)
        view_pos += n
        if view_pos >= len(chunk):
            return frames


# -- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", list(SPECS))
def test_spec_round_trip_and_canonical(spec: str) -> None:
    enc, dec = Encoder(spec), Decoder(spec)
    assert enc.spec == dec.spec
    # The canonical spec parses back to itself.
    assert Encoder(enc.spec).spec == enc.spec
    payload = b"abcd" if spec.startswith("fixed:4") else (b"a" if spec == "fixed:1" else b"hello")
    wire = enc.encode(payload)
    assert len(wire) >= len(payload)
    assert dec.feed(wire) == [payload]
    assert dec.buffered == 0
    assert dec.consumed == len(wire)
    assert dec.feed_eof() == []


def test_known_wire_formats() -> None:
    assert Encoder("length:4").encode(b"abcd") == b"\x00\x00\x00\x04abcd"
    assert Encoder("length:2,le").encode(b"abcd") == b"\x04\x00abcd"
    assert Encoder("length:2,adjust=-2").encode(b"abcd") == b"\x00\x06abcd"
    assert Encoder("varint").encode(b"x" * 300)[:2] == b"\xac\x02"
    assert Encoder("line").encode(b"abcd") == b"abcd\n"
    assert Encoder("line,crlf").encode(b"abcd") == b"abcd\r\n"
    assert Encoder("netstring").encode(b"abcd") == b"4:abcd,"
    assert Encoder("fixed:4").encode(b"abcd") == b"abcd"
    assert Encoder("magic:cafe,crc=none").encode(b"ab") == b"\xca\xfe\x00\x00\x00\x02ab"
    # line strips an optional \r before \n
    assert Decoder("line").feed(b"abc\r\ndef\n") == [b"abc", b"def"]
    assert Decoder("line,keep").feed(b"abc\n") == [b"abc\n"]
    assert Decoder('delim:"\\r\\n"|00').feed(b"a\r\nb\x00c") == [b"a", b"b"]


def test_netty_length_field_examples() -> None:
    # Netty LengthFieldBasedFrameDecoder docs: offset=1, length=2, adjust=-3, strip=3.
    d = Decoder("length:2,offset=1,adjust=-3,strip=3")
    wire = b"\xca\x00\x10\xfe" + b"HELLO, WORLD"
    assert d.feed(wire[:5]) == []
    assert d.feed(wire[5:] + wire) == [b"\xfeHELLO, WORLD"] * 2
    # offset=2, length=3, strip=0: the whole frame, headers included.
    d = Decoder("length:3,offset=2,strip=0")
    wire = b"\xca\xfe\x00\x00\x0cHELLO, WORLD"
    assert d.feed(wire) == [wire]
    # length=3, adjust=2 (a header after the length), strip=0.
    d = Decoder("length:3,adjust=2,strip=0")
    wire = b"\x00\x00\x0c\xca\xfeHELLO, WORLD"
    assert d.feed(wire) == [wire]


@pytest.mark.parametrize("spec", [s for s in DECODE_ONLY if "offset" in s])
def test_offset_specs_refuse_to_encode(spec: str) -> None:
    with pytest.raises(EncodeError, match="offset"):
        Encoder(spec).encode(b"x")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
@pytest.mark.parametrize("spec", list(SPECS))
def test_random_payloads_any_chunking(spec: str, data: st.DataObject) -> None:
    payloads = data.draw(st.lists(SPECS[spec], max_size=30), label="payloads")
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=10_000), max_size=40), label="cuts")
    wire = Encoder(spec).encode_many(payloads)
    # encode_many is the concatenation of encode.
    assert wire == b"".join(Encoder(spec).encode(p) for p in payloads)
    pieces = chunked(wire, cuts)

    d = Decoder(spec)
    got: List[bytes] = []
    for piece in pieces:
        got += d.feed(piece)
    got += d.feed_eof()
    assert got == payloads
    assert d.error_count == 0

    d = Decoder(spec)
    got = []
    for piece in pieces:
        got += feed_via_buffer(d, piece)
    got += d.feed_eof()
    assert got == payloads


@settings(max_examples=30, deadline=None)
@given(payloads=st.lists(ANY, max_size=20), data=st.data())
def test_bytes_like_inputs(payloads: List[bytes], data: st.DataObject) -> None:
    enc = Encoder("length:4")
    wire = enc.encode_many([bytearray(p) for p in payloads])
    assert wire == enc.encode_many([memoryview(p) for p in payloads])
    d = Decoder("length:4")
    kind = data.draw(st.sampled_from([bytes, bytearray, memoryview]))
    assert d.feed(kind(wire)) == payloads


def test_big_frames_through_small_buffers() -> None:
    payloads = [bytes(range(256)) * 1000, b"", b"x" * 70_000]
    for spec in ("length:4", "varint", "netstring", "magic:cafe"):
        wire = Encoder(spec).encode_many(payloads)
        d = Decoder(spec)
        got: List[bytes] = []
        for i in range(0, len(wire), 4096):
            got += feed_via_buffer(d, wire[i : i + 4096])
        assert got == payloads, spec


# -- errors --------------------------------------------------------------------------------------


def test_frame_too_large_on_4gib_header() -> None:
    d = Decoder("length:4,max=1MiB")
    first = Encoder("length:4").encode(b"x")
    with pytest.raises(FrameTooLarge) as info:
        d.feed(first + b"\xff\xff\xff\xff")
    err = info.value
    assert isinstance(err, DecodeError)
    assert err.length is not None and err.length >= 0xFFFFFFFF
    assert err.limit == 1024 * 1024
    assert err.offset == len(first)
    assert err.recoverable is False
    # The frame decoded before the error in the same call travels with it.
    assert err.frames == [b"x"]
    # The decoder stays failed.
    with pytest.raises(FrameTooLarge):
        d.feed(b"")


def test_fatal_error_carries_frames_of_the_same_call_only() -> None:
    enc = Encoder("length:2")
    d = Decoder("length:2,max=100")
    assert d.feed(enc.encode(b"early")) == [b"early"]
    with pytest.raises(FrameTooLarge) as info:
        d.feed(enc.encode_many([b"a", b"b"]) + b"\xff\xff")
    assert info.value.frames == [b"a", b"b"]
    assert info.value.length is not None and info.value.length > 100
    assert info.value.limit == 100


def test_truncated_frame_on_eof() -> None:
    d = Decoder("length:4")
    assert d.feed(b"\x00\x00\x00\x05ab") == []
    assert d.buffered == 6
    with pytest.raises(TruncatedFrame) as info:
        d.feed_eof()
    assert info.value.buffered == 6
    assert info.value.expected == 9
    assert info.value.offset == 0
    # Header not even complete.
    d = Decoder("length:4")
    d.feed(b"\x00\x00")
    with pytest.raises(TruncatedFrame) as info:
        d.feed_eof()
    assert info.value.expected is None
    # A clean end is not an error, and feeding after the end is refused.
    d = Decoder("line")
    assert d.feed(b"a\nb\n") == [b"a", b"b"]
    assert d.feed_eof() == []
    with pytest.raises(ValueError):
        d.feed(b"c\n")


def test_line_without_newline_at_eof() -> None:
    # A last line without \n is not a frame: it is reported, with its bytes, never lost
    # silently; the complete lines before it were delivered.
    d = Decoder("line")
    assert d.feed(b"one\ntwo\nabc") == [b"one", b"two"]
    with pytest.raises(TruncatedFrame) as info:
        d.feed_eof()
    assert (info.value.buffered, info.value.offset) == (3, 8)


def test_checksum_error_fatal_and_resync() -> None:
    enc = Encoder("magic:cafe,crc=crc32c")
    good = enc.encode(b"hello")
    bad = bytearray(good)
    bad[-1] ^= 0x01
    # fail policy: fatal, with the frame before it.
    d = Decoder("magic:cafe,crc=crc32c,fail")
    with pytest.raises(ChecksumError) as info:
        d.feed(enc.encode(b"ok") + bytes(bad) + enc.encode(b"after"))
    err = info.value
    assert err.frames == [b"ok"]
    assert err.length == 5
    assert err.expected != err.computed
    assert err.offset == len(enc.encode(b"ok"))
    # resync (the default): the frames around it arrive, the error is reported on the side.
    d = Decoder("magic:cafe,crc=crc32c")
    assert d.feed(enc.encode(b"ok") + bytes(bad) + enc.encode(b"after")) == [b"ok", b"after"]
    errors = d.take_errors()
    assert len(errors) == 1 and isinstance(errors[0], ChecksumError)
    assert errors[0].recoverable is True
    assert d.error_count == 1
    assert d.take_errors() == []


def test_magic_resynchronises_after_garbage() -> None:
    enc = Encoder("magic:cafe")
    d = Decoder("magic:cafe")
    assert d.feed(b"garbage!" + enc.encode(b"one") + enc.encode(b"two")) == [b"one", b"two"]
    errors = d.take_errors()
    assert errors and all(e.recoverable for e in errors)
    assert all(isinstance(e, DecodeError) for e in errors)


@pytest.mark.parametrize("policy", ["discard", "oversize=discard"])
def test_discard_policy_keeps_frames_around_oversize(policy: str) -> None:
    enc = Encoder("length:4")
    d = Decoder(f"length:4,max=16,{policy}")
    wire = enc.encode_many([b"a", b"x" * 100, b"b"])
    got: List[bytes] = []
    for i in range(0, len(wire), 7):  # oversize frame spread over several feeds
        got += d.feed(wire[i : i + 7])
    assert got == [b"a", b"b"]
    errors = d.take_errors()
    assert len(errors) == 1
    err = errors[0]
    assert isinstance(err, FrameTooLarge)
    assert err.recoverable is True
    assert err.limit == 16
    assert err.length == 104  # the whole frame, header included
    assert err.offset == 5
    assert d.error_count == 1


def test_discard_policy_delimiter_and_varint() -> None:
    d = Decoder("line,max=8,discard")
    got = d.feed(b"ok\n" + b"y" * 50 + b"\nfine\n")
    assert got == [b"ok", b"fine"]
    errs = d.take_errors()
    assert len(errs) == 1 and isinstance(errs[0], FrameTooLarge)
    d = Decoder("varint,max=8,discard")
    enc = Encoder("varint")
    assert d.feed(enc.encode_many([b"a", b"z" * 40, b"b"])) == [b"a", b"b"]
    assert isinstance(d.take_errors()[0], FrameTooLarge)


def test_delimiter_too_long_reports_no_length() -> None:
    d = Decoder("line,max=8")
    with pytest.raises(FrameTooLarge) as info:
        d.feed(b"a" * 100)
    assert info.value.length is None
    assert info.value.limit == 8


def test_malformed_frames() -> None:
    with pytest.raises(MalformedFrame) as info:
        Decoder("netstring").feed(b"3:abcX")
    assert info.value.kind == "netstring"
    with pytest.raises(MalformedFrame) as info:
        Decoder("varint").feed(b"\xff" * 11)
    assert info.value.kind in ("varint_overflow", "varint_not_minimal")
    with pytest.raises(MalformedFrame) as info:
        Decoder("magic:cafe,fail").feed(b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09")
    assert info.value.kind == "bad_magic"


def test_spec_errors_are_value_errors() -> None:
    for bad in ["length:5", "length", "nope", "length:4,max=lots", "fixed", "", "length:4,be,le",
                "length:4,fail,oversize=discard", "magic:cafe,crc=md5", "line,bogus"]:
        with pytest.raises(SpecError) as info:
            Decoder(bad)
        assert isinstance(info.value, ValueError)
        with pytest.raises(ValueError):
            Encoder(bad)
    assert "max" in str(pytest.raises(SpecError, Decoder, "length:4,max=lots").value)


def test_encode_errors() -> None:
    with pytest.raises(EncodeError) as info:
        Encoder("line").encode(b"a\nb")
    assert isinstance(info.value, ValueError)
    with pytest.raises(EncodeError):
        Encoder("delim:00").encode(b"a\x00b")
    with pytest.raises(EncodeError):
        Encoder("fixed:4").encode(b"abc")
    with pytest.raises(EncodeError):
        Encoder("length:1").encode(b"x" * 256)
    with pytest.raises(EncodeError):
        Encoder("line,max=4").encode(b"x" * 10)
    # encode_many fails as a whole on one bad payload.
    with pytest.raises(EncodeError):
        Encoder("line").encode_many([b"ok", b"bad\n"])
    with pytest.raises(TypeError):
        Encoder("length:4").encode("text")  # type: ignore[arg-type]


# -- get_buffer ----------------------------------------------------------------------------------


def test_get_buffer_view_released_after_next_call() -> None:
    d = Decoder("length:4")
    view = d.get_buffer()
    assert len(view) >= 1
    assert not view.readonly
    view[:5] = b"\x00\x00\x00\x01z"
    assert d.buffer_updated(5) == [b"z"]
    with pytest.raises(ValueError):
        view[0] = 1
    with pytest.raises(ValueError):
        bytes(view)
    # Any later call releases the previous view, feed included.
    view = d.get_buffer(10)
    d.feed(b"")
    with pytest.raises(ValueError):
        view[0] = 1
    view = d.get_buffer(10)
    d.get_buffer(10)
    with pytest.raises(ValueError):
        view[0] = 1


def test_buffer_updated_checks() -> None:
    d = Decoder("length:4")
    with pytest.raises(BufferError):
        d.buffer_updated(1)
    view = d.get_buffer(16)
    with pytest.raises(ValueError):
        d.buffer_updated(len(view) + 1)


def test_get_buffer_view_released_with_its_decoder() -> None:
    view = Decoder("length:4").get_buffer()  # the decoder, and its buffer, go at once
    with pytest.raises(ValueError):
        view[0] = 1


def test_get_buffer_with_a_real_socket_pair() -> None:
    import socket

    a, b = socket.socketpair()
    try:
        payloads = [b"m%d" % i for i in range(1000)]
        a.sendall(Encoder("length:4").encode_many(payloads))
        a.close()
        d = Decoder("length:4")
        got: List[bytes] = []
        while True:
            n = b.recv_into(d.get_buffer())
            if n == 0:
                got += d.feed_eof()
                break
            got += d.buffer_updated(n)
        assert got == payloads
    finally:
        b.close()


# -- garbage never crashes -----------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
@pytest.mark.parametrize("spec", list(SPECS) + DECODE_ONLY + ["line,max=16,discard", "length:4,max=64,discard", "magic:cafe,fail"])
def test_garbage_only_raises_decode_errors(spec: str, data: st.DataObject) -> None:
    garbage = data.draw(st.binary(max_size=600), label="garbage")
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=600), max_size=10), label="cuts")
    use_buffer = data.draw(st.booleans(), label="use_buffer")
    d = Decoder(spec)
    at_eof = False
    try:
        for piece in chunked(garbage, cuts):
            frames = feed_via_buffer(d, piece) if use_buffer else d.feed(piece)
            assert all(isinstance(f, bytes) for f in frames)
        at_eof = True
        d.feed_eof()
    except DecodeError as err:
        assert isinstance(err.offset, int) and err.offset >= 0
        assert isinstance(err.frames, list)
        if not at_eof:
            # Once failed, it stays failed with a decode error.
            with pytest.raises(DecodeError):
                d.feed(b"")
    for recovered in d.take_errors():
        assert isinstance(recovered, DecodeError) and recovered.recoverable
    assert isinstance(d.error_count, int)
    repr(d)


def test_exports() -> None:
    assert framelink.Decoder is Decoder and framelink.Encoder is Encoder
    assert issubclass(FrameTooLarge, DecodeError)
    assert issubclass(DecodeError, framelink.FramelinkError)

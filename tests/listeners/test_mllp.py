"""The MLLP framing codec: split frames, several per read, garbage, oversize, 8-bit text."""

from __future__ import annotations

import pytest

from ecgcad.integration.transport.mllp import MllpDecoder, MllpFrameTooLarge, UnterminatedFrame, frame

MSG = b"MSH|^~\\&|A|B|C|D|20240101||ORU^R01|1|P|2.5.1\rPID|1||42\r"


def test_frame_wraps_message_in_start_and_end_blocks() -> None:
    assert frame(MSG) == b"\x0b" + MSG + b"\x1c\x0d"
    assert frame("MSH|é") == b"\x0bMSH|\xc3\xa9\x1c\x0d"


def test_frame_refuses_block_characters_inside_the_message() -> None:
    with pytest.raises(ValueError):
        frame(b"MSH\x1c|x")


def test_decoder_reassembles_a_frame_split_over_every_byte() -> None:
    dec = MllpDecoder()
    out: list[bytes] = []
    for byte in frame(MSG):
        out += dec.feed(bytes([byte]))
    assert out == [MSG]
    assert dec.discarded_bytes == 0
    assert not dec.in_frame


def test_decoder_returns_several_frames_from_one_read_in_order() -> None:
    dec = MllpDecoder()
    data = frame(MSG) + frame(MSG.replace(b"|1|", b"|2|")) + frame(MSG.replace(b"|1|", b"|3|"))
    out = dec.feed(data)
    assert [m.split(b"|")[9] for m in out] == [b"1", b"2", b"3"]


def test_decoder_skips_garbage_before_a_start_block() -> None:
    dec = MllpDecoder()
    assert dec.feed(b"hello\r\n" + frame(MSG)) == [MSG]
    assert dec.discarded_bytes == 7


def test_decoder_keeps_8bit_and_utf8_bytes_unchanged() -> None:
    latin = MSG + b"NTE|1||M\xfcller\r"
    utf8 = MSG + "NTE|1||Müller 心电图\r".encode()
    assert MllpDecoder().feed(frame(latin) + frame(utf8)) == [latin, utf8]


def test_decoder_raises_on_oversized_frame_and_keeps_frames_before_it() -> None:
    dec = MllpDecoder(max_frame_bytes=len(MSG))
    with pytest.raises(MllpFrameTooLarge) as info:
        dec.feed(frame(MSG) + b"\x0b" + b"x" * (len(MSG) + 1))
    assert info.value.frames == [MSG]
    assert info.value.limit == len(MSG)


def test_decoder_detects_oversize_across_reads_without_buffering_it_all() -> None:
    dec = MllpDecoder(max_frame_bytes=1000)
    dec.feed(b"\x0b" + b"x" * 600)
    with pytest.raises(MllpFrameTooLarge):
        dec.feed(b"x" * 600)
    assert dec.pending_bytes == 0


def test_decoder_tolerates_end_block_and_cr_in_separate_reads() -> None:
    dec = MllpDecoder()
    data = frame(MSG)
    assert dec.feed(data[:-1]) == [MSG]
    assert dec.feed(data[-1:] + frame(MSG)) == [MSG]
    assert dec.discarded_bytes == 0


def test_start_block_inside_a_frame_ends_it_as_unterminated_and_starts_the_next() -> None:
    other = MSG.replace(b"|1|", b"|2|")
    stream = b"\x0b" + MSG + frame(other)  # the first frame's end block is missing
    for pieces in ([stream], [bytes([b]) for b in stream]):
        dec = MllpDecoder()
        out = [m for piece in pieces for m in dec.feed(piece)]
        assert out == [MSG, other]
        assert [type(m) for m in out] == [UnterminatedFrame, bytes]
        assert dec.unterminated_frames == 1
        assert not dec.in_frame


def test_keepalive_and_empty_frames_come_back_as_empty_messages() -> None:
    dec = MllpDecoder()
    out = dec.feed(b"\x0b\x1c\r" * 3 + b"\x0b\x0b" + frame(MSG))
    assert out == [b"", b"", b"", b"", b"", MSG]
    assert [type(m) is UnterminatedFrame for m in out] == [False, False, False, True, True, False]


def test_unterminated_frame_over_the_limit_raises() -> None:
    dec = MllpDecoder(max_frame_bytes=10)
    with pytest.raises(MllpFrameTooLarge):
        dec.feed(b"\x0b" + b"x" * 11 + b"\x0b")

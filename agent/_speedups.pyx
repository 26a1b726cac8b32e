# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, infer_types=False
"""The compiled ingest core: a validating CBOR scanner and a libzmq burst reader.

This module owns two hot loops and nothing else; agent/fastpath.py chooses
between them and the pure-Python path, agent/codec.py stays the readable
reference for every decision.

Scanner (`Scanner.decode_into`) promises, for every frame:
- it reads only bytes inside the frame, whatever they are (every length is
  compared with what is left before it is used; no item is read past the end);
- it builds no Python object per CBOR item: an accepted event becomes one
  `bytes` (the frame itself when the frame is that one event), nothing else;
- when it answers, the answer equals agent.codec.FrameDecoder's: the same
  accepted events in the same classes, then at most one rejection under the
  same reason. Where it does not implement the exact semantics it answers
  UNSURE for the rest of the frame, starting at the item it could not judge,
  and that suffix goes through the reference (`fallback`). UNSURE is always
  allowed; a wrong certain answer never is (tests/test_speedups.py,
  tests/test_fastpath.py and `make fuzz` check this differentially).

What it judges itself: well-formedness (RFC 8949 App. C), definite lengths,
UTF-8 of every text string (Python's strict decoder: no overlong forms, no
surrogates, nothing above U+10FFFF), depth as cbor2 counts it (an item inside
more than max_depth containers or tags fails before its head is read, so an
empty container at the limit passes), duplicate keys in every map whose keys
are all ints, byte strings or text (two text keys are equal in Python iff
their valid UTF-8 bytes are; ints by value, whatever the head's width),
checked after the value as cbor2 does, the required fields and their types,
one tag 55799 around the event, the class from `type` through the rules.
What it leaves to cbor2 (UNSURE): a map key of any other type (Python
equality makes 1, 1.0 and true collide; codec.py's hash-flooding bound counts
them), a map with more than MAP_KEYS keys (so never more than the codec's
MAX_OTHER_KEYS = 64 int keys) or more than KEY_SLOTS keys open at once,
frames that are not `bytes`.

BurstReader promises: the frames of up to max_frames messages / max_bytes
bytes (the last frame may cross it) received with ZMQ_DONTWAIT from the very
libzmq socket pyzmq created, a multipart message skipped whole and counted,
exactly as agent/loop.py's Python burst does it. It calls libzmq through
function addresses found by agent/fastpath.py in the libzmq pyzmq loaded: the
wheel ships no zmq.h and a second libzmq linked here would be a second
instance that cannot use pyzmq's socket.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize
from cpython.bytes cimport PyBytes_GET_SIZE
from cpython.list cimport PyList_Append
from libc.stdint cimport uint8_t, uint32_t, uint64_t, uintptr_t
from libc.string cimport memcmp

import errno

from agent import codec

# --- Outcome codes of one item. Reasons index REASON_NAMES.
cdef enum:
    OK = 0
    R_TRUNCATED = 1
    R_MALFORMED = 2
    R_INDEFINITE = 3
    R_DUPLICATE = 4
    R_UTF8 = 5
    R_TOO_DEEP = 6
    R_NOT_A_MAP = 7
    R_MISSING = 8
    R_BAD_TYPE = 9
    R_EMPTY = 10
    N_CODES = 11
    UNSURE = 100

# The codec's own strings: the scanner counts under exactly the reference's names.
REASON_NAMES = (
    None,
    codec.TRUNCATED,
    codec.MALFORMED,
    codec.INDEFINITE_LENGTH,
    codec.DUPLICATE_KEY,
    codec.INVALID_UTF8,
    codec.TOO_DEEP,
    codec.NOT_A_MAP,
    codec.MISSING_FIELD,
    codec.BAD_FIELD_TYPE,
    codec.EMPTY_FRAME,
)
UNSURE_OUTCOME = "unsure"

# --- Bounds.
# Levels of the explicit stack: an item is only pushed when its depth is
# <= max_depth, so max_depth + 1 levels are ever open; 64 allows max_depth
# up to 62 (the contract uses 32; FrameDecoder's default).
cdef enum:
    STACK = 64
MAX_DEPTH_LIMIT = STACK - 2
# Keys per map judged here. Honest events have ~10; duplicates are found by
# comparing with every earlier key of the map (length first), so a map costs
# at most MAP_KEYS**2 / 2 = 512 compares before it goes to cbor2, whose text
# keys are hashed with randomised hashes (codec.py: safe from flooding).
cdef enum:
    MAP_KEYS = 32
# Keys of all maps open at once (an inner map's keys sit above its parent's).
cdef enum:
    KEY_SLOTS = 1024

cdef enum:
    K_ARRAY = 0
    K_MAP = 1
    K_TAG = 2

cdef enum:
    F_NONE = 0
    F_METER = 1
    F_TS = 2
    F_TYPE = 3

cdef enum:
    SELF_DESCRIBED = 55799

cdef struct KeySpan:
    # A map key as Python compares it: major type 0/1 (an int: `value`) or
    # 2/3 (bytes or text: the `len` bytes at `off`). Keys of different major
    # types are never equal in Python (-1-n != n, b"a" != "a", 1 != "1").
    int major
    uint64_t value
    size_t off
    size_t len

cdef struct Level:
    uint64_t remaining  # array items, map pairs or tag contents (1) still to come
    int kind
    int want_value  # map: the next item is the value of `key`
    int key_base  # map: index of its first key in the key slots
    KeySpan key  # map: the key awaiting its value (checked for duplicates after it)

cdef struct EventInfo:
    # What the event map said about the three required fields: the major type
    # of each value (-1 when absent) and where the text of `type` is.
    int meter_major
    int ts_major
    int type_major
    size_t type_off
    size_t type_len


cdef inline bint _utf8_valid(const uint8_t* s, size_t n) noexcept nogil:
    """Python's strict UTF-8 (RFC 3629 table 3-7): the well-formed byte sequences."""
    cdef size_t i = 0
    cdef uint8_t c, lo, hi
    while i < n:
        c = s[i]
        if c < 0x80:
            i += 1
            continue
        if c < 0xC2:  # continuation byte, or C0/C1 (overlong 2-byte)
            return False
        if c < 0xE0:
            if n - i < 2 or (s[i + 1] & 0xC0) != 0x80:
                return False
            i += 2
            continue
        if c < 0xF0:
            lo = 0xA0 if c == 0xE0 else 0x80  # E0 80..9F: overlong
            hi = 0x9F if c == 0xED else 0xBF  # ED A0..BF: surrogates
            if n - i < 3 or s[i + 1] < lo or s[i + 1] > hi or (s[i + 2] & 0xC0) != 0x80:
                return False
            i += 3
            continue
        if c < 0xF5:
            lo = 0x90 if c == 0xF0 else 0x80  # F0 80..8F: overlong
            hi = 0x8F if c == 0xF4 else 0xBF  # F4 90..: above U+10FFFF
            if (
                n - i < 4
                or s[i + 1] < lo
                or s[i + 1] > hi
                or (s[i + 2] & 0xC0) != 0x80
                or (s[i + 3] & 0xC0) != 0x80
            ):
                return False
            i += 4
            continue
        return False  # F5..FF
    return True


cdef int _scan_item(
    const uint8_t* b,
    size_t pos,
    size_t end,
    int max_depth,
    Level* stack,
    KeySpan* keys,
    EventInfo* info,
    size_t* item_end,
) noexcept nogil:
    """Judge the one CBOR item at b[pos]: OK (and *item_end) or an outcome code.

    Invariant: pos <= end at every read; a length is compared with end - pos
    before anything moves by it.
    """
    cdef int sp = 0  # open levels = depth of the next item
    cdef int nkeys = 0  # key slots in use
    cdef int event_level = -1  # index of the event map in the stack, if open
    cdef int top_major = -1
    cdef uint64_t top_tag = 0
    cdef int content_major = -1  # major type of a top-level tag's content
    cdef int pending_field = F_NONE  # event map: the key just read names this field
    cdef uint8_t ib
    cdef int major, ai, size, i, is_key
    cdef uint64_t arg
    cdef Level* lev
    cdef KeySpan* k

    info.meter_major = -1
    info.ts_major = -1
    info.type_major = -1
    info.type_off = 0
    info.type_len = 0

    while True:
        # --- One item head, at depth sp.
        if sp > max_depth:
            return R_TOO_DEEP  # cbor2 fails before reading the head of such an item
        if pos >= end:
            return R_TRUNCATED
        ib = b[pos]
        pos += 1
        major = ib >> 5
        ai = ib & 31
        if ai < 24:
            arg = ai
        elif ai < 28:
            size = 1 << (ai - 24)
            if end - pos < <size_t>size:
                return R_TRUNCATED
            arg = 0
            for i in range(size):
                arg = (arg << 8) | b[pos + i]
            pos += size
        elif ai < 31:
            return R_MALFORMED  # reserved additional information
        elif major == 2 or major == 3 or major == 4 or major == 5:
            return R_INDEFINITE
        else:
            return R_MALFORMED  # AI 31 on an int or a tag, or a stray break

        is_key = 0
        if sp > 0:
            lev = &stack[sp - 1]
            if lev.kind == K_MAP:
                if lev.want_value:
                    if sp - 1 == event_level and pending_field != F_NONE:
                        if pending_field == F_METER:
                            info.meter_major = major
                        elif pending_field == F_TS:
                            info.ts_major = major
                        else:
                            info.type_major = major
                            info.type_off = pos
                            info.type_len = <size_t>arg  # checked below if major == 3
                        pending_field = F_NONE
                else:
                    is_key = 1
                    if major > 3:
                        # A float, simple value, array, map or tag key: Python
                        # equality (1 == 1.0 == true, NaN != NaN) and the
                        # codec's hash-flooding bound decide; cbor2 judges.
                        return UNSURE
                    lev.key.major = major
                    lev.key.value = arg
                    lev.key.off = pos
                    lev.key.len = 0
            elif lev.kind == K_TAG and sp == 1:
                content_major = major
        else:
            top_major = major
            if major == 6:
                top_tag = arg

        # --- The item's body.
        if major == 2 or major == 3:
            if arg > end - pos:
                return R_TRUNCATED
            if major == 3 and not _utf8_valid(b + pos, <size_t>arg):
                return R_UTF8
            if is_key:
                lev = &stack[sp - 1]
                lev.key.len = <size_t>arg
                if major == 3 and sp - 1 == event_level:
                    if arg == 5 and memcmp(b + pos, b"meter", 5) == 0:
                        pending_field = F_METER
                    elif arg == 2 and memcmp(b + pos, b"ts", 2) == 0:
                        pending_field = F_TS
                    elif arg == 4 and memcmp(b + pos, b"type", 4) == 0:
                        pending_field = F_TYPE
            pos += <size_t>arg
        elif major == 4 or major == 5 or major == 6:
            if major == 6:
                arg = 1
            if arg != 0:
                if major == 5:
                    if sp == 0 or (sp == 1 and top_major == 6 and top_tag == SELF_DESCRIBED):
                        event_level = sp
                    stack[sp].kind = K_MAP
                    stack[sp].want_value = 0
                    stack[sp].key_base = nkeys
                else:
                    stack[sp].kind = K_ARRAY if major == 4 else K_TAG
                stack[sp].remaining = arg
                sp += 1
                continue
        elif major == 7:
            if ai == 24 and arg < 32:
                return R_MALFORMED  # a simple value < 32 in two bytes
        # major 0, 1 and the rest of 7: the head was the whole item.

        # --- An item is complete: close the levels it completes.
        while sp > 0:
            lev = &stack[sp - 1]
            if lev.kind == K_MAP:
                if not lev.want_value:
                    lev.want_value = 1  # that was the key (an int, bytes or text: see its head)
                    break
                # That was the value: cbor2 inserts the pair now and finds a
                # duplicate only here (after the value decoded without error).
                for i in range(lev.key_base, nkeys):
                    k = &keys[i]
                    if k.major != lev.key.major:
                        continue
                    if k.major < 2:
                        if k.value == lev.key.value:
                            return R_DUPLICATE
                    elif k.len == lev.key.len and memcmp(b + k.off, b + lev.key.off, k.len) == 0:
                        return R_DUPLICATE
                if nkeys - lev.key_base >= MAP_KEYS or nkeys >= KEY_SLOTS:
                    return UNSURE
                keys[nkeys] = lev.key
                nkeys += 1
                lev.want_value = 0
            lev.remaining -= 1
            if lev.remaining != 0:
                break
            if lev.kind == K_MAP:
                nkeys = lev.key_base
            sp -= 1
        if sp == 0:
            break

    item_end[0] = pos
    # --- The event checks, in codec._event_class's order.
    if top_major == 5:
        pass
    elif top_major == 6 and top_tag == SELF_DESCRIBED and content_major == 5:
        pass
    else:
        return R_NOT_A_MAP
    if info.meter_major < 0 or info.ts_major < 0 or info.type_major < 0:
        return R_MISSING
    if info.ts_major != 0 or info.type_major != 3:
        return R_BAD_TYPE
    if info.meter_major != 0 and info.meter_major != 3:
        return R_BAD_TYPE
    return OK


# --- Rules: type text (UTF-8 bytes) -> class index, an open-addressing table.

cdef struct RuleSlot:
    const char* text  # NULL: empty slot
    size_t len
    int cls


cdef inline uint64_t _fnv1a(const uint8_t* s, size_t n) noexcept nogil:
    cdef uint64_t h = 1469598103934665603ULL
    cdef size_t i
    for i in range(n):
        h = (h ^ s[i]) * 1099511628211ULL
    return h


cdef class Scanner:
    """Frames -> the codec's DecodeResult, judged in C; UNSURE suffixes go to `fallback`.

    Not thread-safe (the stack and key slots are per scanner).
    """

    cdef Level _stack[STACK]
    cdef KeySpan _keys[KEY_SLOTS]
    cdef int _max_depth
    cdef RuleSlot* _slots
    cdef uint64_t _mask
    cdef object _rule_bytes  # keeps the UTF-8 texts the slots point into alive
    cdef object _slot_buffer
    cdef int _default_class
    cdef readonly unsigned long long unsure_frames

    def __cinit__(self):
        self._slots = NULL

    def __init__(self, lookup, int max_depth=32, int default_class=2):
        if not 1 <= max_depth <= MAX_DEPTH_LIMIT:
            raise ValueError(f"max_depth must be within 1..{MAX_DEPTH_LIMIT}, not {max_depth}")
        self._max_depth = max_depth
        self._default_class = default_class
        self.unsure_frames = 0
        self.set_rules(lookup)

    def set_rules(self, lookup):
        """Classify with `lookup` ({type text: class index}) from the next call on."""
        cdef list texts = []
        cdef object text
        for t, cls in lookup.items():
            try:
                text = t.encode("utf-8")
            except UnicodeEncodeError:
                continue  # a lone surrogate: no valid UTF-8 type can equal it
            texts.append((text, int(cls)))
        cdef uint64_t size = 8
        while size < 2 * <uint64_t>len(texts) + 2:
            size *= 2
        # The slot array lives in a bytearray so Python frees it with the scanner.
        buffer = bytearray(<size_t>size * sizeof(RuleSlot))
        cdef RuleSlot* slots = <RuleSlot*><char*>buffer
        cdef uint64_t i, h
        cdef const char* p
        for i in range(size):
            slots[i].text = NULL
        for text, cls in texts:
            p = PyBytes_AS_STRING(text)
            h = _fnv1a(<const uint8_t*>p, PyBytes_GET_SIZE(text)) & (size - 1)
            while slots[h].text != NULL:
                h = (h + 1) & (size - 1)
            slots[h].text = p
            slots[h].len = PyBytes_GET_SIZE(text)
            slots[h].cls = cls
        self._rule_bytes = texts
        self._slot_buffer = buffer
        self._slots = slots
        self._mask = size - 1

    cdef inline int _classify(self, const uint8_t* s, size_t n) noexcept:
        cdef uint64_t h = _fnv1a(s, n) & self._mask
        cdef RuleSlot* slot
        while True:
            slot = &self._slots[h]
            if slot.text == NULL:
                return self._default_class
            if slot.len == n and memcmp(slot.text, s, n) == 0:
                return slot.cls
            h = (h + 1) & self._mask

    def scan(self, frame):
        """One frame, for tests: ([(start, stop, class), ...], outcome, at).

        outcome is None (every item accepted), a reason string, or "unsure";
        `at` is the offset of the item it is about (len(frame) for None).
        """
        if not PyBytes_CheckExact(frame):
            raise TypeError("frame must be bytes")
        cdef const uint8_t* b = <const uint8_t*>PyBytes_AS_STRING(frame)
        cdef size_t n = PyBytes_GET_SIZE(frame)
        cdef size_t pos = 0, stop = 0
        cdef EventInfo info
        cdef int code
        events = []
        if n == 0:
            return events, REASON_NAMES[R_EMPTY], 0
        while pos < n:
            code = _scan_item(b, pos, n, self._max_depth, self._stack, self._keys, &info, &stop)
            if code == UNSURE:
                return events, UNSURE_OUTCOME, pos
            if code != OK:
                return events, REASON_NAMES[code], pos
            events.append((pos, stop, self._classify(b + info.type_off, info.type_len)))
            pos = stop
        return events, None, n

    def decode_into(self, frames, result, fallback):
        """Add the frames' events and rejections to `result` (a codec.DecodeResult).

        `fallback(rest)` must return the reference's DecodeResult for the bytes
        `rest` (an UNSURE frame from the item the scanner could not judge on,
        or a frame that is not `bytes`); it is merged in arrival order.
        """
        cdef list c0, c1, c2, c3, lst
        c0, c1, c2, c3 = result.events
        cdef long long counts[N_CODES]
        cdef long long accepted = 0
        cdef int i, code, cls
        cdef const uint8_t* b
        cdef size_t n, pos, stop
        cdef EventInfo info
        cdef object piece
        for i in range(N_CODES):
            counts[i] = 0
        for frame in frames:
            if not PyBytes_CheckExact(frame):
                self._merge(fallback(frame), result, &accepted)
                continue
            b = <const uint8_t*>PyBytes_AS_STRING(frame)
            n = PyBytes_GET_SIZE(frame)
            if n == 0:
                counts[R_EMPTY] += 1
                continue
            pos = 0
            while pos < n:
                code = _scan_item(b, pos, n, self._max_depth, self._stack, self._keys, &info, &stop)
                if code == OK:
                    cls = self._classify(b + info.type_off, info.type_len)
                    if cls == 0:
                        lst = c0
                    elif cls == 1:
                        lst = c1
                    elif cls == 2:
                        lst = c2
                    else:
                        lst = c3
                    if pos == 0 and stop == n:
                        PyList_Append(lst, frame)  # a frame that is one event: no copy
                    else:
                        piece = PyBytes_FromStringAndSize(<const char*>b + pos, stop - pos)
                        PyList_Append(lst, piece)
                    accepted += 1
                    pos = stop
                elif code == UNSURE:
                    self.unsure_frames += 1
                    piece = frame if pos == 0 else frame[pos:]
                    self._merge(fallback(piece), result, &accepted)
                    break
                else:
                    counts[code] += 1
                    break
        result.accepted += accepted
        rejected = result.rejected
        for i in range(1, N_CODES):
            if counts[i]:
                name = REASON_NAMES[i]
                rejected[name] = rejected.get(name, 0) + counts[i]

    cdef int _merge(self, sub, result, long long* accepted) except -1:
        cdef int cls
        for cls in range(4):
            if sub.events[cls]:
                result.events[cls].extend(sub.events[cls])
        accepted[0] += sub.accepted
        rejected = result.rejected
        for name, count in sub.rejected.items():
            rejected[name] = rejected.get(name, 0) + count
        return 0


# --- The burst reader: libzmq through the addresses of the loaded library.

cdef extern from *:
    """
    #include <errno.h>
    /* zmq.h 4.x: typedef struct zmq_msg_t { unsigned char _[64]; } with an
       alignment attribute (8 on every ABI libzmq supports). */
    typedef struct { unsigned char _[64]; } __attribute__((aligned(8))) ea_zmq_msg_t;
    typedef int (*ea_msg_init_t)(ea_zmq_msg_t *);
    typedef int (*ea_msg_recv_t)(ea_zmq_msg_t *, void *, int);
    typedef void *(*ea_msg_data_t)(ea_zmq_msg_t *);
    typedef size_t (*ea_msg_size_t)(const ea_zmq_msg_t *);
    typedef int (*ea_msg_more_t)(const ea_zmq_msg_t *);
    typedef int (*ea_msg_close_t)(ea_zmq_msg_t *);
    typedef int (*ea_errno_t)(void);
    #define EA_ZMQ_DONTWAIT 1
    """
    ctypedef struct ea_zmq_msg_t:
        pass
    ctypedef int (*ea_msg_init_t)(ea_zmq_msg_t*) noexcept nogil
    ctypedef int (*ea_msg_recv_t)(ea_zmq_msg_t*, void*, int) noexcept nogil
    ctypedef void* (*ea_msg_data_t)(ea_zmq_msg_t*) noexcept nogil
    ctypedef size_t (*ea_msg_size_t)(const ea_zmq_msg_t*) noexcept nogil
    ctypedef int (*ea_msg_more_t)(const ea_zmq_msg_t*) noexcept nogil
    ctypedef int (*ea_msg_close_t)(ea_zmq_msg_t*) noexcept nogil
    ctypedef int (*ea_errno_t)() noexcept nogil
    int EA_ZMQ_DONTWAIT
    int EAGAIN
    int EINTR

# The libzmq functions BurstReader needs, in the order of LIBZMQ_FUNCTIONS.
LIBZMQ_FUNCTIONS = (
    "zmq_msg_init",
    "zmq_msg_recv",
    "zmq_msg_data",
    "zmq_msg_size",
    "zmq_msg_more",
    "zmq_msg_close",
    "zmq_errno",
)


cdef class BurstReader:
    """One burst from a pyzmq socket: read() -> (frames, multipart messages skipped)."""

    cdef object _socket  # keeps the pyzmq Socket (and its libzmq socket) alive
    cdef object _error  # zmq.ZMQError, raised for anything but EAGAIN/EINTR
    cdef ea_msg_init_t _init
    cdef ea_msg_recv_t _recv
    cdef ea_msg_data_t _data
    cdef ea_msg_size_t _size
    cdef ea_msg_more_t _more
    cdef ea_msg_close_t _close
    cdef ea_errno_t _errno
    cdef bint _in_multipart  # the rest of a multipart message is still to be skipped
    cdef readonly int max_frames
    cdef readonly Py_ssize_t max_bytes

    def __init__(self, socket, addresses, int max_frames, Py_ssize_t max_bytes, error):
        if len(addresses) != len(LIBZMQ_FUNCTIONS) or not all(addresses):
            raise ValueError("one non-zero address per LIBZMQ_FUNCTIONS entry")
        if max_frames < 1 or max_bytes < 1:
            raise ValueError("max_frames and max_bytes must be >= 1")
        self._socket = socket
        self._error = error
        self._init = <ea_msg_init_t><uintptr_t>addresses[0]
        self._recv = <ea_msg_recv_t><uintptr_t>addresses[1]
        self._data = <ea_msg_data_t><uintptr_t>addresses[2]
        self._size = <ea_msg_size_t><uintptr_t>addresses[3]
        self._more = <ea_msg_more_t><uintptr_t>addresses[4]
        self._close = <ea_msg_close_t><uintptr_t>addresses[5]
        self._errno = <ea_errno_t><uintptr_t>addresses[6]
        self._in_multipart = False
        self.max_frames = max_frames
        self.max_bytes = max_bytes

    cdef bint _skip_rest(self, void* sock) except -1:
        """Read and drop the rest of a multipart message (while _in_multipart).
        True once it is gone; False if its next frame is not there yet (EAGAIN,
        EINTR: the next read() goes on); any other error raises."""
        cdef ea_zmq_msg_t msg
        cdef int rc, err
        while self._in_multipart:
            self._init(&msg)
            rc = self._recv(&msg, sock, EA_ZMQ_DONTWAIT)
            if rc < 0:
                err = self._errno()
                self._close(&msg)
                if err == EAGAIN or err == EINTR:
                    return False
                raise self._error(err)
            self._in_multipart = self._more(&msg) != 0
            self._close(&msg)
        return True

    def read(self):
        """Up to max_frames messages / max_bytes bytes that are already there, without waiting.

        A message of several frames counts as one of the max_frames and is
        skipped whole (INTERFACE.md rejects it); its parts arrive together, so
        the rest is there when its first frame is.
        """
        cdef uintptr_t handle = self._socket.underlying
        if handle == 0:
            raise self._error(errno.ENOTSOCK)  # the socket was closed
        cdef void* sock = <void*>handle
        cdef ea_zmq_msg_t msg
        cdef list frames = []
        cdef int multipart = 0
        cdef int attempts = 0
        cdef int rc, err
        cdef Py_ssize_t nbytes = 0
        cdef size_t size
        cdef object frame
        # The tail of a multipart message whose rest was not there last time
        # (libzmq delivers messages atomically: not expected, but bounded).
        if not self._skip_rest(sock):
            return frames, multipart
        while attempts < self.max_frames:
            attempts += 1
            self._init(&msg)
            rc = self._recv(&msg, sock, EA_ZMQ_DONTWAIT)
            if rc < 0:
                err = self._errno()
                self._close(&msg)
                if err == EAGAIN or err == EINTR:
                    break
                raise self._error(err)
            if self._more(&msg):
                self._close(&msg)
                multipart += 1
                self._in_multipart = True
                if not self._skip_rest(sock):
                    return frames, multipart
                continue
            size = self._size(&msg)
            try:
                frame = PyBytes_FromStringAndSize(<const char*>self._data(&msg), size)
            finally:
                self._close(&msg)  # also when the copy raises MemoryError
            frames.append(frame)
            nbytes += size
            if nbytes >= self.max_bytes:
                break
        return frames, multipart

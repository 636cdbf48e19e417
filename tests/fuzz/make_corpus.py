#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into tests/fuzz/corpus/<target>/.

Run from anywhere: python3 tests/fuzz/make_corpus.py. Every file in those
directories is generated here (the directories are emptied first), from the
golden vectors in tests/vectors (format: tests/vectors/README.md) and from
small layouts built the way the C code builds them. Input formats are the
ones described at the top of each tests/fuzz/fuzz_<target>.c.
"""
import os
import shutil
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
VECTORS = os.path.join(ROOT, 'tests', 'vectors')
CORPUS = os.path.join(HERE, 'corpus')


def load_vectors(name):
    """Records of a .hex file as (label, offset, bytes), in file order."""
    recs = []
    with open(os.path.join(VECTORS, name)) as f:
        for line in f:
            if line.startswith('#') or not line.strip():
                continue
            label, off, hexbytes = line.split()
            recs.append((label, int(off), bytes.fromhex(hexbytes)))
    return recs


def vec(recs, label):
    for l, _, b in recs:
        if l == label:
            return b
    raise KeyError(label)


class Corpus:
    def __init__(self, target):
        self.dir = os.path.join(CORPUS, target)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        self.seen = set()

    def add(self, name, data):
        if data in self.seen:
            return
        self.seen.add(data)
        with open(os.path.join(self.dir, name), 'wb') as f:
            f.write(data)


# ---- events ----------------------------------------------------------------

def event_corpus(events):
    c = Corpus('event')
    for label, _, b in events:
        if 'fd-' in label or label.startswith('FdMessage'):
            continue  # not events: the fd message's data byte and cmsghdr
        name = label.replace('>', '').replace('.', '_')
        c.add(name, b'\x00' + b)  # control byte 0: the default maximum
    # The same FallbackData under a maximum it exceeds (max choice 2 = 12).
    c.add('FallbackData_over_max', b'\x02' + vec(events, 'FallbackData.v3.id7'))


# ---- handshakes ------------------------------------------------------------

def hs_input(flags, fdctl, fdpos, chunk, stream):
    return bytes([flags, fdctl, fdpos, chunk]) + stream


def handshake_corpus(events):
    c = Corpus('handshake')
    client = b''.join(b for l, _, b in events
                      if '.C>S.' in l and 'fd-' not in l)  # hs01 + hs03
    allow, ok, take, eof = 1, 2, 4, 8
    fd2_when_asked = 0x80 | 4 | 2  # send 2 memfds when the server waits for them
    c.add('v3_memfd', hs_input(allow | ok, fd2_when_asked, 0, 0, client))
    c.add('v3_memfd_chunked_take', hs_input(allow | ok | take, fd2_when_asked, 0, 7, client))
    c.add('v3_memfd_refused', hs_input(allow, fd2_when_asked, 0, 0, client))
    c.add('v3_memfd_pipe_and_3fds', hs_input(allow | ok, 0x80 | 4 | 3 | 0x10, 0, 0, client))
    c.add('v3_memfd_byte1', hs_input(allow | ok, fd2_when_asked | 0x40, 0, 0, client))
    c.add('v3_memfd_not_allowed', hs_input(ok, fd2_when_asked, 0, 0, client))
    c.add('v3_fd_in_stream', hs_input(allow | ok, 4 | 2, 2, 0, client))
    c.add('v2_file', hs_input(ok, 0, 0, 0, vec(events, 'ShareMemoryByFilePath.v2')))
    c.add('v2_file_chunked_eof', hs_input(ok | eof, 0, 0, 3,
                                          vec(events, 'ShareMemoryByFilePath.v2')[:30]))
    c.add('v3_file', hs_input(ok, 0, 0, 0, vec(events, 'ExchangeProtoVersion.v3.client') +
                              vec(events, 'ShareMemoryByFilePath.v3')))
    c.add('polling_first', hs_input(ok, 0, 0, 0, vec(events, 'Polling.v3')))


# ---- pools -----------------------------------------------------------------

POOL_HDR, LIST_HDR, SLICE_HDR = 8, 36, 20


def pool_layout(size, classes):
    """Bytes of a fresh pool, as pool_create() lays it out."""
    region = size - POOL_HDR - LIST_HDR * len(classes)
    buf = bytearray(size)
    off = POOL_HDR
    for cap, pct in classes:
        n = (region * pct // 100) // (cap + SLICE_HDR)
        assert n > 0, (size, classes)
        stride = cap + SLICE_HDR
        struct.pack_into('<iIIIIii8x', buf, off, n, n, 0, (n - 1) * stride, cap, 0, 0)
        first = off + LIST_HDR
        for k in range(n):
            last = k + 1 == n
            struct.pack_into('<IIIIB3x', buf, first + k * stride, cap, 0, 0,
                             0 if last else (k + 1) * stride, 0 if last else 1)
        off = first + n * stride
    struct.pack_into('<HHI', buf, 0, len(classes), 0, off - POOL_HDR)
    return bytes(buf)


def check_layout_against_vectors():
    """The generator must match shmipc-go's 1 MiB pool byte for byte."""
    pool = pool_layout(1 << 20, [(4096, 70), (16384, 30)])
    n = 0
    for label, off, b in load_vectors('pool_small.hex'):
        if label.startswith('s0.'):
            assert pool[off:off + len(b)] == b, label
            n += 1
    assert n > 100


def pool_ops(*ops):
    return b''.join(struct.pack('<BI', op, arg) for op, arg in ops)


def pool_corpus():
    c = Corpus('pool')
    small = [(44, 60), (108, 40)]  # strides 64 and 128
    for size, classes in ((600, small), (2048, small), (4096, [(108, 50), (492, 50)]), (12288, [(108, 50), (492, 30), (2028, 20)]),
                          (1024, [(236, 100)]), (1536, [(108, 40), (44, 60)])):
        pool = pool_layout(size, classes)
        first = POOL_HDR + LIST_HDR
        ops = pool_ops((3, 0), (3, 1), (5, 100), (6, 0x00030011), (0, first), (1, first),
                       (2, first), (7, first), (8, 0x80040002), (5, 0x80000400), (9, 0))
        c.add('pool_%d_%d' % (size, len(classes)), struct.pack('<H', size) + pool + ops)
    # The mapping size taken from the rest of the input (u16 0), no script.
    c.add('pool_rest', struct.pack('<H', 0) + pool_layout(600, small))
    # A header that claims more than the mapping holds.
    bad = bytearray(pool_layout(600, small))
    struct.pack_into('<I', bad, 4, 4096)
    c.add('pool_used_too_big', struct.pack('<H', 600) + bytes(bad))


# ---- chains and queues -----------------------------------------------------

def chain_op(code, a=0, b=0, v=0):
    return struct.pack('<BBHI', code, a, b, v)


def queue_pair_raw(cap, head0, tail0, head1, tail1, elems):
    half = 24 + 12 * cap
    buf = bytearray(2 * half)
    for i, (h, t) in enumerate(((head0, tail0), (head1, tail1))):
        struct.pack_into('<IqqI', buf, i * half, cap, h, t, 0)
    for i, (sid, off, st) in enumerate(elems):
        struct.pack_into('<III', buf, 24 + 12 * (i % cap), sid, off, st)
        struct.pack_into('<III', buf, half + 24 + 12 * (i % cap), sid, off, st)
    return bytes(buf)


def chain_corpus(chain_vectors):
    c = Corpus('chain')
    # The pool of fuzz_chain.c: 32 KiB, classes 108/50, 492/30, 2028/20.
    l0_first = POOL_HDR + LIST_HDR
    write = lambda n: chain_op(0, 0, n)
    c.add('write_check_free', write(100) + write(3000) + chain_op(3) + chain_op(4, 0, 0, 1) +
          chain_op(5) + chain_op(5))
    c.add('write_many', b''.join(write(n) for n in (0, 1, 108, 109, 492, 2028, 5000)))
    # Contiguous pieces from pool_writer_reserve(): 1 + 16 * 8 = 129 bytes each.
    c.add('reserve', chain_op(0, 1 | 8 << 1, 3000) + chain_op(0, 1 | 127 << 1, 2100) +
          chain_op(4) + chain_op(5))
    c.add('loop', write(300) + chain_op(1, 4, 0, 0) + chain_op(3) + chain_op(4) + chain_op(5))
    c.add('bad_fields', write(50) + chain_op(1, 0, 0, 7) + chain_op(1, 1, 1, 0xffffffff) +
          chain_op(1, 2, 2, 100) + chain_op(1, 7, 3, 2) + chain_op(3, 0x80, 0, l0_first) +
          chain_op(5, 0x80, 0, l0_first))
    c.add('list_race', chain_op(2, 2, 0, 0x80000005) + chain_op(2, 0, 1, 1) + chain_op(6, 0, 0) +
          write(2000) + chain_op(5))
    # A shaped queue (sane counters, elements naming held chains).
    c.add('queue_shaped', write(200) + write(700) + chain_op(7, 2, 7, 0x03000300) +
          bytes(2 * (24 + 12 * 8)))
    # A raw queue pair laid out like shmipc-go's (queue_8192.hex, cap 8 here),
    # with the element of chain.hex case A (absolute offset of a slice).
    qv = load_vectors('queue_8192.hex')
    elem = vec(chain_vectors, 'A.queue.elem0')
    sid, _, st = struct.unpack('<III', elem)
    raw = queue_pair_raw(8, 0, 3, 0, 2, [(sid, l0_first, st), (3, l0_first + 128, 0), (2, 0, 1)])
    assert vec(qv, 's0.q0.header')[:4] == struct.pack('<I', 8192)
    c.add('queue_raw', write(100) + chain_op(7, 1 | (4 << 2), 7, 0) + raw)
    c.add('queue_raw_server', write(100) + chain_op(7, 1 | 2 | (4 << 2), 7, 0) + raw)
    # The peer moves both counters after the map (which = 3: advance both
    # by 2), then produces once more while the consumer goes to sleep (8).
    c.add('queue_peer_moves', write(100) + chain_op(7, 1 | 2 | (4 << 2), 7, 0x05000000) + raw +
          struct.pack('<BI', 3 | 8, 2))


# ---- configs ---------------------------------------------------------------

CONFIGS = {
    'minimal.conf': 'services = ( { name = "echo"; listen = "unix:/tmp/x/echo.sock"; '
                    'plugin = "echo.so"; } );\n',
    'full.conf': '''workers = 4;
spin_us = 50;
log = { level = "debug"; };
admin = "unix:/tmp/x/admin.sock";
admin_mode = "0600";
plugin_dir = "plugins";
limits = { max_sessions = 16; max_pool_bytes = 4294967295L; handshake_timeout_ms = 10;
           max_event_bytes = 65536; drain_timeout_ms = 0; };
services = (
  { name = "echo"; listen = "tcp:127.0.0.1:7000"; mode = "0660"; owner = "0:0";
    allowed_dir = "/dev/shm"; plugin = "echo.so"; watch = true;
    config = { n = 1; s = "x"; f = 1.5; b = false; l = ( 1, "a" ); a = [ 1, 2 ]; }; },
  { name = "greeter"; listen = "/tmp/x/greeter.sock"; plugin = "greeter.so"; }
);
''',
    'include.conf': '@include "inc.conf"\nservices = ( { name = "a"; listen = "unix:/tmp/a"; '
                    'plugin = "echo.so"; } );\n',
    'wrapped.conf': 'limits = { max_pool_bytes = 4295032832; };\nservices = ( { name = "a"; '
                    'listen = "unix:/tmp/a"; plugin = "echo.so"; } );\n',
    'dup.conf': 'services = ( { name = "a"; listen = "unix:/tmp/a"; plugin = "echo.so"; },\n'
                '             { name = "a"; listen = "unix:/tmp/a"; plugin = "echo.so"; } );\n',
    'types.conf': 'workers = "2"; log = 1; services = { };\n',
    'unknown.conf': 'worker = 2;\nservices = ( { name = "a"; listen = "x"; plugin = "nope.so"; '
                    'mode = "0999"; } );\n',
    'syntax.conf': 'services = ( { name = "a" listen = ; } \n/* unterminated',
}


def config_corpus():
    c = Corpus('config')
    with open(os.path.join(ROOT, 'etc', 'shmipcd.conf'), 'rb') as f:
        shipped = f.read()
    c.add('shmipcd.conf', shipped)
    # The shipped file with the plugin paths the fuzz target's directory has.
    local = (shipped.replace(b'"../build/plugins"', b'"plugins"')
             .replace(b'"kv.so"', b'"greeter.so"'))
    c.add('shmipcd_local.conf', local)
    for name, text in CONFIGS.items():
        c.add(name, text.encode())


def main():
    check_layout_against_vectors()
    events = load_vectors('events.hex')
    event_corpus(events)
    handshake_corpus(events)
    pool_corpus()
    chain_corpus(load_vectors('chain.hex'))
    config_corpus()
    total = 0
    for d, _, files in os.walk(CORPUS):
        total += sum(os.path.getsize(os.path.join(d, f)) for f in files)
    print('seed corpora in %s: %d bytes' % (os.path.relpath(CORPUS, ROOT), total))
    return 0


if __name__ == '__main__':
    sys.exit(main())

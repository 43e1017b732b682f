"""Crafts the capture that ids_suricata.rs runs through palisade-ids and Suricata.

Usage: craft.py OUT.pcap. Every TCP flow has a full handshake, ACKed data and a FIN
exchange, so that both engines see the streams complete.
"""
import sys
from scapy.all import Ether, IP, IPv6, TCP, UDP, ICMP, Raw, wrpcap

pkts = []
MAC = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def l3(c, s, v6):
    return (IPv6 if v6 else IP)(src=c, dst=s)


def tcp_flow(c, s, sport, dport, client=(), server=(), v6=False, order=None):
    """client/server: lists of payload segments, sent in turn (client first).

    order: an optional permutation of the client's segments as sent (for out-of-order)."""
    cseq, sseq = 1000, 5000
    up = lambda: Ether(**MAC) / l3(c, s, v6)
    down = lambda: Ether(src=MAC["dst"], dst=MAC["src"]) / l3(s, c, v6)
    pkts.append(up() / TCP(sport=sport, dport=dport, flags="S", seq=cseq))
    pkts.append(down() / TCP(sport=dport, dport=sport, flags="SA", seq=sseq, ack=cseq + 1))
    cseq += 1
    sseq += 1
    pkts.append(up() / TCP(sport=sport, dport=dport, flags="A", seq=cseq, ack=sseq))
    segs = []
    off = cseq
    for d in client:
        segs.append((off, d))
        off += len(d)
    if order is not None:
        segs = [segs[i] for i in order]
    for seq, d in segs:
        pkts.append(up() / TCP(sport=sport, dport=dport, flags="PA", seq=seq, ack=sseq) / Raw(d))
    cseq = off
    pkts.append(down() / TCP(sport=dport, dport=sport, flags="A", seq=sseq, ack=cseq))
    for d in server:
        pkts.append(down() / TCP(sport=dport, dport=sport, flags="PA", seq=sseq, ack=cseq) / Raw(d))
        sseq += len(d)
        pkts.append(up() / TCP(sport=sport, dport=dport, flags="A", seq=cseq, ack=sseq))
    pkts.append(up() / TCP(sport=sport, dport=dport, flags="FA", seq=cseq, ack=sseq))
    pkts.append(down() / TCP(sport=dport, dport=sport, flags="FA", seq=sseq, ack=cseq + 1))
    pkts.append(up() / TCP(sport=sport, dport=dport, flags="A", seq=cseq + 1, ack=sseq + 1))


C, S = "10.0.0.1", "10.0.0.2"
req = b"GET /admin/panel HTTP/1.1\r\nHost: a\r\nUser-Agent: curl/7.88\r\nAccept: */*\r\n\r\n"
ok = b"HTTP/1.1 200 OK\r\nServer: EVIL/1.0\r\nContent-Length: 0\r\nX-Pad: 0123456789\r\n\r\n"
# 1001 and 1002: one request, one response.
tcp_flow(C, S, 40001, 80, [req], [ok])
# 1001: the match is in the second request of a keep-alive connection.
post = b"POST /form HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nX-Pad: 0123456789abcdef\r\n\r\nabc"
tcp_flow(C, S, 40002, 80, [post, req], [ok.replace(b"EVIL", b"nginx")])
# 1001: the request split inside "/admin" over two segments (stream match only).
tcp_flow(C, S, 40003, 80, [req[:7], req[7:]])
# 1002 alone: a plain request, then the banner (in 40001 the drop of 1001 cut the flow before
# its response, in both engines).
tcp_flow(C, S, 40025, 80, [b"GET /index.html HTTP/1.1\r\nHost: a\r\nX-Pad: 0123456789abcdef0123456789\r\n\r\n"], [ok])
# Not 1001: the path is too far from GET (within).
tcp_flow(C, S, 40004, 80, [b"GET /aaaaaaaaaaaaaaaaaaaaa/admin HTTP/1.1\r\nHost: a\r\nX-Pad: 0123456789abcdef0123\r\n\r\n"])
# 1003: FTP, USER root on the second line (pcre multi-line).
tcp_flow(C, S, 40005, 21, [b"USER anonymous\r\n" + b"x" * 60, b"USER root\r\nPASS x\r\n" + b"y" * 60])
tcp_flow(C, S, 40006, 21, [b"USER rooted\r\n" + b"x" * 60])
# 1004: UDP magic at bytes 4-7; and a datagram with it at 8-11 (no match).
for sport, pay in ((40007, b"\x00\x01\x02\x03\xde\xad\xbe\xef rest"), (40008, b"\x00" * 8 + b"\xde\xad\xbe\xef")):
    pkts.append(Ether(**MAC) / IP(src=C, dst=S) / UDP(sport=sport, dport=5353) / Raw(pay))
# 1014: UDP to a listed network, and to an excluded one.
pkts.append(Ether(**MAC) / IP(src=C, dst="10.8.0.5") / UDP(sport=40009, dport=5353) / Raw(b"a QUERY here"))
pkts.append(Ether(**MAC) / IP(src=C, dst="10.9.0.5") / UDP(sport=40010, dport=5353) / Raw(b"a QUERY here"))
# 1005: ICMP echo with the secret, and one without.
pkts.append(Ether(**MAC) / IP(src=C, dst=S) / ICMP(id=7, seq=1) / Raw(b"xxSECRETxx"))
pkts.append(Ether(**MAC) / IP(src=C, dst="10.0.0.3") / ICMP(id=8, seq=1) / Raw(b"xxsecretxx"))
# 1006: alternative ports in and out of the list.
tcp_flow(C, S, 40011, 8080, [req])
tcp_flow(C, S, 40012, 9000, [req])
tcp_flow(C, S, 40013, 9001, [req])
# 1007: a marker 300 bytes into a segment.
tcp_flow(C, S, 40014, 6000, [b"z" * 300 + b"MARKER-42" + b"z" * 20])
# 1008: the same flow from .1 (excluded) and from .5.
tcp_flow(C, S, 40015, 7000, [b"hello there, this is a greeting padded out to the window...."])
tcp_flow("10.0.0.5", S, 40016, 7000, [b"hello there, this is a greeting padded out to the window...."])
# 1009: ping from the server side of 7100 (<>), and to it.
tcp_flow(C, S, 40017, 7100, [b"x" * 70], [b"PING reply padded out past the sixty-four byte window of it..."])
tcp_flow(C, S, 40018, 7100, [b"Ping request padded out past the sixty-four byte window of it."])
# 1010: EVIL split across out-of-order segments.
tcp_flow(C, S, 40019, 7200, [b"aaaaEV", b"IL bbbb"], order=[1, 0])
# 1011: IPv6.
tcp_flow("fd00::1", "fd00::2", 40020, 443, [b"..attack at dawn, padded out past the sixty-four byte window."], v6=True)
# 1012: case matters (no nocase): "token" does not match, "Token" does.
tcp_flow(C, S, 40021, 7300, [b"token=abc, padded out past the sixty-four byte window, yes......"])
tcp_flow(C, S, 40022, 7300, [b"Token=abc, padded out past the sixty-four byte window, yes......"])
# 1013: a relative chain that needs backtracking over the first "a=".
tcp_flow(C, S, 40023, 7400, [b"a=1 long long long; a=2 b=3; padded out past the window, yes....."])
tcp_flow(C, S, 40024, 7400, [b"a=1 long long long b=3; padded out past the window, yes.........."])
# Benign flows no rule is about: the preselection must turn them down (payloads of at least
# the 64-byte window, without any rule's gram).
tcp_flow(C, S, 40026, 7000, [b"greetings and salutations, nothing to see in this one at all, no no no."])
tcp_flow(C, S, 40027, 443, [bytes(range(0x20, 0x20 + 90))])
tcp_flow(C, S, 40028, 8443, [b"z" * 200], [b"y" * 200])

wrpcap(sys.argv[1], pkts)

//! The policy file: a TOML document that [`parse_policy`] checks and turns into a
//! [`Policy`].
//!
//! # Format
//!
//! ```toml
//! [firewall]
//! default = "allow"        # what happens when no rule matches: "allow" | "drop" (default "allow")
//! log_default = false      # emit an event for each packet the default action drops
//! fragments = "match-l3"   # non-first IP fragments: "drop" | "match-l3" (default "match-l3")
//!
//! [sets.blocklist]         # a named IP set, referred to as "@blocklist"
//! entries = ["203.0.113.0/24", "2001:db8:bad::/48", "198.51.100.7"]
//! files = ["blocklist.txt"]
//!
//! [[firewall.rule]]
//! name = "ssh-from-office"
//! priority = 10
//! action = "allow"
//! proto = "tcp"
//! src = "10.0.0.0/8"
//! dport = 22
//!
//! [[firewall.rule]]
//! name = "drop-blocklist"
//! priority = 20
//! action = "drop"
//! src = "@blocklist"
//! log = true
//!
//! [[firewall.rule]]
//! name = "ping-limit"
//! action = "rate-limit"
//! proto = "icmp"
//! icmp_type = 8
//! rate = { pps = 100, burst = 200, per = "source" }
//! ```
//!
//! ## `[firewall]`
//!
//! | key | value | default |
//! | --- | --- | --- |
//! | `default` | `"allow"` or `"drop"` (`"rate-limit"` is not allowed here) | `"allow"` |
//! | `log_default` | boolean: emit an event for each packet the default action drops | `false` |
//! | `fragments` | `"drop"` or `"match-l3"`: how non-first IP fragments, which carry no ports, are handled (see [`FragmentPolicy`]) | `"match-l3"` |
//! | `rate_prefix_v6` | `1..=128`: the IPv6 sources in one prefix of this length share the bucket of a `per = "source"` rate limit, so a client cannot get a fresh bucket for each address of the /64 it is given | `64` |
//! | `rate_prefix_v4` | `1..=32`: the same for IPv4 sources | `32` |
//! | `stateful` | boolean: accept every packet of an established or related connection before any rule is tried, so rules only decide which connections may start. Turns connection tracking on (see [Connection tracking](#connection-tracking)); an error with `[conntrack] enabled = false` | `false` |
//! | `capacity_rules` | integer `1..=2097152`: the least room, in rule entries, of a policy generation's rule table (`FW_RULES`), when more than the policy needs: live edits that grow the rules up to it are written without a new table. Applies from the next install (see [`crate::capacity`]) | sized from the policy |
//! | `capacity_set_hosts` | integer `1..=16777216`: the least room of a generation's table of set members that are single addresses (`FW_SET_HOSTS`), as `capacity_rules` | sized from the policy |
//! | `capacity_set_prefixes` | integer `1..=16777216`: the least room of a generation's table of set members that are shorter prefixes (`FW_SETS`, with the `@country:XX` sets), as `capacity_rules` | sized from the policy |
//!
//! A policy may hold at most [`MAX_RULES`] rules. The tables of rule entries, set members
//! and DNS names are sized at every install for the generation being written (a quarter
//! more than it needs, rounded up to a power of two, at least 1,024 entries, or the
//! `capacity_*` settings when larger), so a reload or live edit that needs more gets bigger
//! tables; only a generation past the hard maxima is refused (see [`crate::capacity`]).
//!
//! ## Rates
//!
//! Every rate (`pps`, `qps`, `answer_rate`, `event_rate`) is kept as a token bucket that
//! counts whole nanoseconds between two tokens (`1e9 / rate`, rounded down), so a rate runs
//! fast by the rounding: by less than 1 % up to 10 000 000 a second ([`MAX_RATE`]), by up to
//! 2x near 1e9, and above 1e9 it would not limit at all. Faster rates are refused with an
//! error that names the rule or section. A `burst` may be anything up to 4294967295: the
//! bucket's clock stays far from overflowing.
//!
//! ## `[sets.NAME]`
//!
//! A named set of addresses. `NAME` is 1 to 64 of `A-Z a-z 0-9 _ -`.
//!
//! | key | value |
//! | --- | --- |
//! | `entries` | list of addresses or CIDR blocks |
//! | `files` | list of set files (one address or CIDR per line, `#` comments; see [`super::setfile`]); relative paths are taken from the policy file's directory |
//!
//! Both keys are optional; a set with no entries at all is valid and matches nothing.
//!
//! ## `[geoip]` and `@country:XX`
//!
//! `src = "@country:CN"` (or `dst`, in a list of one, like any set) names the prefixes of a
//! country in a GeoIP country database; the code is ISO 3166-1 alpha-2, in either case. The
//! prefixes become a set named `country:CN`, counted, written and swapped like a `[sets.NAME]`.
//! See [`crate::geoip`] for the formats and the choice of country.
//!
//! | key | value | default |
//! | --- | --- | --- |
//! | `format` | `"geolite2"` (MaxMind GeoLite2 Country CSV) or `"dbip"` (DB-IP lite country CSV) | required |
//! | `blocks` | GeoLite2: list of the `Blocks-IPv4.csv` and/or `Blocks-IPv6.csv` files | required with `"geolite2"` |
//! | `locations` | GeoLite2: the `Locations-en.csv` file (`geoname_id` -> `country_iso_code`) | required with `"geolite2"` |
//! | `files` | DB-IP: list of `start,end,country` files | required with `"dbip"` |
//! | `refresh` | seconds (`1..=604800`), or a string `"30m"`, `"6h"`, `"1d"`: read the files again this often when they changed, and swap the country sets | only on reload |
//!
//! Relative paths are taken from the policy file's directory. An unknown country (not an ISO
//! code and not in the data) is an error at the rule; a known one with no data is an empty set.
//!
//! ## `[[firewall.rule]]`
//!
//! Every condition given must hold for a rule to match; a condition left out matches
//! everything.
//!
//! | key | value | default |
//! | --- | --- | --- |
//! | `name` | 1 to 64 of `A-Z a-z 0-9 _ . -`, unique among rules | none |
//! | `priority` | integer `0..=4294967295`; lower runs first | `1000000` + position in file |
//! | `action` | `"allow"`, `"drop"`, `"rate-limit"` or `"mark"` (allow, setting the mark and/or the DSCP) | required |
//! | `rate` | `{ pps = N, burst = N, per = "source" \| "rule" }`: required with `"rate-limit"` and only allowed with it; `pps` is `1..=10000000` ([`MAX_RATE`], see [Rates](#rates)), `burst` `1..=4294967295`; `per = "source"` keeps one bucket per source address (per IPv6 /64 by default, see `rate_prefix_v6`), `"rule"` one for the whole rule | `per = "source"` |
//! | `proto` | `"tcp"`, `"udp"`, `"icmp"`, `"icmpv6"`, `"any"`, or a protocol number `0..=255`. The numbers of IPv6 extension headers (0 Hop-by-Hop, 43 Routing, 44 Fragment, 51 AH, 60 Destination Options) are refused on a rule that could match IPv6: the firewall walks past those headers and matches the protocol after them, so no IPv6 packet has them as its protocol. On a rule limited to IPv4 addresses they are taken (51 is IPv4's AH) | `"any"` |
//! | `src`, `dst` | an address or CIDR, a non-empty list of them, or `"@set"` | any address |
//! | `sport`, `dport` | a port `N` (integer or string) or a range `"LO-HI"` with `LO <= HI`; needs `proto` `"tcp"` or `"udp"` | any port |
//! | `tcp_flags` | `"VALUE/MASK"`, see below; needs `proto = "tcp"` | any flags |
//! | `icmp_type` | `0..=255`; needs `proto` `"icmp"` or `"icmpv6"` | any type |
//! | `icmp_code` | `0..=255`; needs `icmp_type` | any code |
//! | `state` | connection-tracking states: a non-empty list of distinct names among `"new"`, `"established"`, `"related"`, `"invalid"`, or one name as a string; the rule matches packets in any of them. Turns connection tracking on; an error with `[conntrack] enabled = false` | any state, tracked or not |
//! | `log` | boolean: emit an event for every packet this rule drops | `false` |
//! | `dscp` | DSCP code point of the IPv4 TOS / IPv6 traffic class: `0..=63`, or `"cs0"`..`"cs7"`, `"af11"`..`"af43"`, `"ef"`, `"va"` | any DSCP |
//! | `ecn` | ECN codepoint: `"not-ect"` (0), `"ect1"` (1), `"ect0"` (2), `"ce"` (3), or `0..=3` | any ECN |
//! | `ttl` | IPv4 TTL / IPv6 hop limit: a value `N` (integer or string) or a range `"LO-HI"` with `LO <= HI`, within `0..=255`. Every fragment carries it, so a `ttl` rule meets non-first fragments too | any TTL |
//! | `length` | the IP packet's length as its header says (IPv4 total length, IPv6 40 + payload length; no link-layer header, no VLAN tags): a value `N` or a range `"LO-HI"` within `0..=65535`. Each fragment has its own length | any length |
//! | `set_mark` | `"mark"` only: `0..=4294967295`, the socket buffer's mark (`skb->mark`) for `ip rule fwmark`, tc and nftables | not set |
//! | `mirror_to` | `"mirror"` only, and required with it: the interface that gets a copy of every packet the rule matches (the packet itself goes on). Resolved to its index when the policy is loaded: a name with no interface is an error, and the running policy stays | not set |
//! | `redirect_to` | `"redirect"` only: the interface the matching packets leave by, as they are (XDP `bpf_redirect_map`, after an MTU check on that interface). Resolved to its index when the policy is loaded: a name with no interface is an error, and the running policy stays. At most 64 interfaces per policy. A `redirect` rule needs `redirect_to` or `route_table`, not both | not set |
//! | `route_table` | `"redirect"` only: `1..=4294967295`, a routing table (`254` is `main`); the matching packets go to the next hop `bpf_fib_lookup` finds there, MACs rewritten and TTL / hop limit decremented. See "Actions" in `docs/design/firewall.md` for what happens without a route, a neighbour or room | not set |
//! | `cpus` | `"steer"` only, and required with it: 1 to 8 distinct online CPU numbers below 64, e.g. `[0, 1]`; each flow goes to one of them, picked by a hash of its addresses, ports and protocol | not set |
//! | `queue_size` | `"steer"` only: `1..=16384`, the CPU map entry's queue (frames waiting for the CPU); CPUs shared by rules get the largest | `2048` |
//! | `set_dscp` | `"mark"` only: `0..=63` or a DSCP name as for `dscp`; the DSCP written into the IP header (ECN kept). A `mark` rule needs `set_mark`, `set_dscp` or both | not set |
//! | `src_mac`, `dst_mac` | the frame's Ethernet source / destination address, exactly: `"aa:bb:cc:dd:ee:ff"` (six hex pairs, `:` or `-` between them, any letter case). Each distinct address a policy uses is a rule shape of its own (at most 256 shapes) | any address |
//! | `iface` | the interface the frame arrives on, by name (`"eth0"`). The name is resolved to the interface's index when the policy is loaded (`palisade check`, start, reload): a name with no interface is an error at that place, and an interface deleted and created again after the load is not the same one until the next reload. Each distinct interface is a rule shape of its own | any interface |
//! | `not` | a list of the rule's own conditions to negate, among `"src"`, `"dst"`, `"sport"`, `"dport"`, `"proto"` (or one as a string): the rule then needs the packet to fail each of them. A negated address matches every address outside the list or set, of either family; a negated port still needs a packet with ports; a negated `proto` cannot go with port, flag or ICMP conditions. Each name must be a condition of the rule, once | nothing negated |
//! | `vlan` | the id of the frame's outermost 802.1Q / 802.1ad tag, `0..=4095` (0: a priority tag), or `"untagged"` for a frame without a tag. A tag the NIC strips on receive (VLAN offload) is not in the frame XDP sees: such frames are `"untagged"` here. Each distinct id is a rule shape of its own | any frame |
//!
//! **Order.** Rules run in order of `priority`, ties in file order. A rule without
//! `priority` gets `1000000` plus its 0-based position among the rules of the file, so rules
//! without priorities run after every rule with a priority below 1000000, in the order they
//! are written. A file that gives no priorities at all simply runs top to bottom.
//!
//! **Addresses.** A bare address means a single host (`/32` or `/128`). A CIDR block must
//! have no bits set past its prefix: `10.0.0.1/8` is rejected as a likely typo for
//! `10.0.0.0/8`. IPv4 and IPv6 entries may be mixed, but a rule whose `src` and `dst` share no
//! address family can never match and is rejected.
//!
//! **TCP flags.** Flag names are `fin`, `syn`, `rst`, `psh`, `ack`, `urg`, `ece`, `cwr`,
//! comma-separated. The rule matches when the flags named in `MASK` are set exactly as in
//! `VALUE`: `"syn/syn,ack"` is a connection attempt (SYN set, ACK clear), `"/syn"` means SYN
//! clear, and `"syn,ack"` without a mask is the same as `"syn,ack/syn,ack"`. `VALUE` must be a
//! subset of `MASK`.
//!
//! **States.** With connection tracking on, every packet is classified before the rules as
//! `new` (it opens a flow, or its flow has not been answered yet), `established` (its flow
//! has seen traffic in both directions), `related` (an ICMP error about a tracked flow) or
//! `invalid` (it can neither belong to a flow nor open one, e.g. a TCP segment outside the
//! window or a stray acknowledgement). A packet the tracker does not classify (a non-first
//! fragment, a TCP header cut short) is in no state: a rule with `state` never matches it,
//! rules without `state` still do.
//!
//! # DNS
//!
//! The `[dns]` section filters DNS queries by the name they ask for, at two attachment
//! points: queries arriving on the guarded interfaces (`[dns.ingress]`, in the XDP program)
//! and queries sent by local processes (`[dns.egress]`, a cgroup v2 `cgroup_skb` egress
//! program). Either may be left out; a policy without them filters no DNS at all.
//!
//! ```toml
//! [dns]
//! ports = [53]                       # destination ports carrying DNS, UDP and TCP
//! answer_rate = 50                   # NXDOMAIN answers/s per client /24 or /56
//!
//! [dns.ingress]                      # queries arriving on the guarded interfaces
//! mode = "blocklist"
//! action = "nxdomain"
//! lists = ["ads", "malware"]
//! rate = { qps = 50, burst = 100 }   # per client address (per cgroup on egress)
//!
//! [dns.egress]                       # queries sent by local processes
//! mode = "allowlist"
//! lists = ["corp"]
//! cgroups = ["/sys/fs/cgroup/unified"]
//! log_allowed = true
//!
//! [dns.lists.ads]
//! files = ["ads.hosts", "ads.txt"]   # hosts files, name lists or adblock `||name^` lists
//! names = ["ads.example.com", "*.tracker.example"]
//!
//! [dns.lists.malware]
//! names = ["malware.example"]
//! subdomains = true                  # plain names also match every name below them
//!
//! [dns.lists.corp]
//! names = ["example.com", "*.example.com"]
//!
//! [[dns.lists.corp.entry]]           # a name with options
//! name = "*.cdn.example.net"
//! qtypes = ["A", "AAAA", 65]
//! max_entropy_bits = 256
//! expires = "2026-12-31T00:00:00Z"
//! ```
//!
//! ## `[dns]`
//!
//! | key | value | default |
//! | --- | --- | --- |
//! | `ports` | list of 1 to [`MAX_DNS_PORTS`] distinct destination ports `1..=65535`; UDP and TCP packets to them are taken as DNS | `[53]` |
//! | `answer_rate` | integer `0..=10000000` (see [Rates](#rates)): NXDOMAIN answers per second that one client prefix may get on ingress; a blocked query over it is dropped unanswered (reason `dns-answer-budget`), so forged queries cannot turn Palisade into a reflector. `0` for no budget | `50` |
//! | `answer_burst` | integer `1..`: answers a client prefix may get at once | `100` |
//! | `answer_prefix_v4` | `0..=32`: IPv4 clients in one prefix of this length share a budget | `24` |
//! | `answer_prefix_v6` | `0..=128`: IPv6 clients in one prefix of this length share a budget | `56` |
//! | `event_rate` | integer `0..=10000000` (see [Rates](#rates)): DNS events per second per CPU (a burst of as many), past which queries are aggregated: counted per name, verdict, reason and client and reported as `dns_summary` events every second, with the first query of each name in each second and samples still reported in full (see `docs/design/dns.md`); `0` = never aggregate, every reported query is an event. Off by default: aggregation pays off in floods of repeated names, but a flood of distinct names costs more with it (measured in `bench/results/dns-events-full.md`) | `0` ([`DnsEvents::DEFAULT_RATE`](super::model::DnsEvents::DEFAULT_RATE)) |
//! | `rate_prefix_v6` | `1..=128`: IPv6 clients in one prefix of this length share the query rate bucket of `[dns.ingress] rate` (egress buckets are per cgroup) | `64` |
//! | `rate_prefix_v4` | `1..=32`: the same for IPv4 clients | `32` |
//! | `event_sample` | integer `0..=4294967295`: over the event budget, one aggregated query in this many is still reported in full (`"sent": "sample"`); `0` = none | `1000` ([`DnsEvents::DEFAULT_SAMPLE`](super::model::DnsEvents::DEFAULT_SAMPLE)) |
//! | `capacity_names` | integer `1..=16777216`: the least room, in DNS name entries, of a generation's name table (`DNS_NAMES`), when more than the lists need (a name with its subdomains makes two, once per scope that uses its list; the domains of `[intel]` feeds count too), as `[firewall] capacity_rules` | sized from the policy |
//!
//! Blocked queries sent to or from a broadcast or multicast MAC or IP address (or from the
//! unspecified address) are never answered: they are dropped with reason
//! `dns-group-address`.
//!
//! ## `[dns.ingress]` and `[dns.egress]`
//!
//! | key | value | default |
//! | --- | --- | --- |
//! | `mode` | `"blocklist"`: names in the lists are blocked, every other name resolves; `"allowlist"`: only names in the lists resolve | required |
//! | `action` | what a blocked query gets: `"nxdomain"`, an NXDOMAIN answer; `"sinkhole"`, an A/AAAA answer with the sinkhole's addresses (NODATA for other questions); `"refused"`, a REFUSED answer; or `"drop"`. Answers go only to UDP queries on ingress. On egress `"nxdomain"` is accepted but falls back to `"drop"`, and the sending process gets `EPERM` at once; `"sinkhole"` and `"refused"` are refused there | `"nxdomain"` on ingress, `"drop"` on egress |
//! | `sinkhole_ipv4` | ingress, `action = "sinkhole"` only: the address A questions get | `"0.0.0.0"` |
//! | `sinkhole_ipv6` | ingress, `action = "sinkhole"` only: the address AAAA questions get | `"::"` |
//! | `sinkhole_ttl` | ingress, `action = "sinkhole"` only: the answer record's TTL, seconds, `0..=2147483647` | `60` |
//! | `lists` | names of `[dns.lists.NAME]` tables, each at most once; may be empty (an empty allowlist blocks every query) | required |
//! | `audit` | boolean: decide and report, but never block | `false` |
//! | `malformed` | `"drop"` or `"allow"`: queries that cannot be parsed safely (see [`DnsScope::block_malformed`]): not exactly one question and at most one OPT record ending the message, a compression pointer in the name that does not point strictly backward, more than [`palisade_common::dns::name::MAX_POINTER_HOPS`] pointers, truncated, a TCP query not alone and whole in its segment, a fragmented query. `"allow"` lets a resolver answer names Palisade could not read | `"drop"` |
//! | `rate` | `{ qps = N, burst = N }`: a token bucket per client address on ingress (per IPv6 /64 by default, see `[dns] rate_prefix_v6`), per cgroup (the sending socket's) on egress; `qps` `1..=10000000` (see [Rates](#rates)), `burst` at least 1 | no limit |
//! | `log_allowed` | boolean: also report allowed queries | `false` |
//! | `cgroups` | egress only: absolute paths of the cgroup v2 directories to attach to | `["/sys/fs/cgroup/unified"]`, the cgroup v2 root |
//!
//! ## `[dns.lists.NAME]`
//!
//! A named list of DNS names. `NAME` is 1 to 64 of `A-Z a-z 0-9 _ -`. All keys are optional
//! and may be combined; a list with no names at all is valid and matches nothing.
//!
//! | key | value | default |
//! | --- | --- | --- |
//! | `files` | list files: hosts files, one name per line, `*.name` wildcards or adblock-style `\|\|name^` (see [`super::namelist`]); relative paths are taken from the policy file's directory | none |
//! | `names` | list of names | none |
//! | `subdomains` | boolean: plain names in this list (from `files`, `names` and `entry`) also match every name below them | `false` |
//! | `entry` | names with options, one `[[dns.lists.NAME.entry]]` table each (below) | none |
//!
//! **Names** are written as in zone files (see [`super::namelist`]): case does not matter,
//! one trailing dot is optional, and `\.`, `\\` and `\DDD` escape a dot, a backslash or
//! any byte inside a label. `example.com` matches exactly that name (or, with
//! `subdomains = true`, that name and every name below it); `*.example.com` matches every
//! name strictly below `example.com`, but not `example.com` itself.
//!
//! ## `[[dns.lists.NAME.entry]]`
//!
//! | key | value | default |
//! | --- | --- | --- |
//! | `name` | one name, as in `names` | required |
//! | `qtypes` | non-empty list of the query types the entry applies to: `A`, `NS`, `CNAME`, `SOA`, `PTR`, `MX`, `TXT`, `AAAA`, `SRV`, `DS`, `DNSKEY`, `SVCB`, `HTTPS`, `CAA`, `ANY` (in any case) or numbers `1..=65535` | every type |
//! | `max_entropy_bits` | integer `0..=2040`: the most Shannon entropy, in bits, that all the labels below the matched name may carry together (counted as sent, letter case included; see [`palisade_common::dns::entropy`]), so DNS tunnels are refused. 256 is recommended: it lets ordinary CDN, cloud and mail host names through and stops tunnels whose names carry more than about 40 bytes. Allowlists only: an error in a list that a blocklist uses. The older `max_entropy` (bits per character) is refused with a message saying this | no limit |
//! | `expires` | RFC 3339 time in UTC, `"2026-12-31T00:00:00Z"` (a string or a TOML date-time; the offset must be `Z`), or a unix time in seconds: the entry no longer applies after it | never |
//!
//! # Connection tracking
//!
//! With tracking on, the datapath follows every flow through the guarded interfaces (both
//! directions), so rules can match on a packet's state (`state` above) and `stateful = true`
//! can let the packets of accepted connections through without a rule for their replies.
//! Tracking is on when `[firewall] stateful = true`, when any rule has `state`, or when the
//! policy has a `[conntrack]` section that does not say `enabled = false`. The section only
//! tunes the tracker; every key is optional.
//!
//! ```toml
//! [firewall]
//! default = "drop"
//! stateful = true              # replies and related ICMP errors pass before the rules
//!
//! [[firewall.rule]]
//! name = "ssh-in"
//! action = "allow"
//! proto = "tcp"
//! dport = 22
//! state = "new"
//!
//! [[firewall.rule]]
//! name = "drop-invalid"
//! priority = 1
//! action = "drop"
//! state = ["invalid"]
//! log = true
//!
//! [conntrack]
//! max_entries = 524288         # established flows tracked at once
//! tcp_established = 7200       # seconds an idle established TCP connection is kept
//! udp = 20
//! ```
//!
//! ## `[conntrack]`
//!
//! | key | value | default |
//! | --- | --- | --- |
//! | `enabled` | boolean: `false` keeps tracking off even though the section is present; then `stateful = true` and `state` are errors | `true` |
//! | `max_entries` | integer `1024..=16777216`: capacity of the table of validated flows (a completed handshake, an answered datagram); only validated flows enter it, so a flood of spoofed packets cannot evict them | `262144` |
//! | `max_unvalidated` | integer `1024..=4194304`: capacity of the table of flows not validated yet (a SYN, an unanswered UDP datagram or echo request); least recently used entries make room when it is full | `16384` |
//! | `max_per_source` | integer `0..=1000000`: validated flows one outside address may have open at once; a new flow over it is dropped (reason `conn-limit`); `0` for no limit | `0` |
//! | `new_per_source` | integer `0..=1000000`: new flows one outside address may open per second (bursts of as many); over it they are dropped (reason `conn-limit`); `0` for no limit | `0` |
//! | `overload_set` | string: the name of a set declared under `[sets.NAME]` (it may have no entries); an address that goes over `max_per_source` or `new_per_source` joins it for `overload_ttl` seconds, and every rule naming `"@NAME"` matches it like a listed member (so `src = "@NAME"` with `action = "drop"` shuts it out). Needs one of those limits and tracking on. Members stay through reloads and restarts; `palisade ct overload` lists them | none |
//! | `overload_ttl` | integer `1..=86400`: seconds an address stays in `overload_set`, counted from when it first went over (going over again meanwhile does not extend it) | `600` |
//! | `tcp_syn` | seconds a TCP handshake may take | `60` |
//! | `tcp_established` | seconds an idle established TCP connection is kept | `21600` (6 h) |
//! | `tcp_closing` | seconds a TCP connection may take to close after the first FIN | `120` |
//! | `tcp_time_wait` | seconds a closed TCP connection stays in TIME_WAIT | `120` |
//! | `tcp_close` | seconds a reset TCP connection is kept | `10` |
//! | `udp` | seconds an unanswered UDP flow is kept | `30` |
//! | `udp_replied` | seconds an idle answered UDP flow is kept | `180` |
//! | `icmp` | seconds an ICMP echo flow is kept | `30` |
//! | `other` | seconds a flow of any other protocol is kept | `600` |
//!
//! Every timeout is an integer number of seconds from `1` to `2592000` (30 days).
//!
//! # Shields
//!
//! `[shield]` turns on DDoS shields in XDP (see `docs/design/shield.md`); each needs
//! connection tracking and turns it on.
//!
//! | key | value | default |
//! | --- | --- | --- |
//! | `syn_ports` | non-empty list of ports and `"LO-HI"` ranges whose SYNs may be answered with SYN cookies from XDP | none |
//! | `syn_cookies` | `"auto"` (when a port's SYN rate from all sources goes over `syn_rate`), `"on"` (always) or `"off"`; needs `syn_ports` | `"auto"` |
//! | `syn_rate` | integer `1..=100000000`: SYNs per second to one port that engage cookies | `1000` |
//! | `syn_hold` | integer `1..=86400`: seconds cookies stay engaged after the rate last went over | `10` |
//! | `mss_v4`, `mss_v6` | the MSS the cookie SYN-ACK offers (`536..=8960`, `1220..=8940`) | `1460`, `1440` |
//! | `wscale` | integer `0..=14`: the window scale the SYN-ACK offers | the host's (from `tcp_rmem` and `rmem_max`) |
//! | `tcp_invalid` | `"drop"`: TCP segments of no flow (not a valid cookie ACK) and outside a flow's windows are dropped before the rules (reason `shield-tcp-invalid`); `"pass"` leaves them to the rules | `"pass"` |
//! | `amplification` | boolean: UDP datagrams from `amplification_ports` that answer nothing this host sent are dropped (reason `shield-amplification`) | `false` |
//! | `amplification_ports` | list of ports and ranges; needs `amplification = true` | `19, 53, 123, 161, 389, 1900, 3702, 11211` |
//! | `source_rate` | integer `1..=100000000`: new flows per second one source prefix may open; more are dropped (reason `shield-source-rate`) and the prefix is recorded as a heavy hitter | no limit |
//! | `source_prefix_v4`, `source_prefix_v6` | prefix lengths sources are counted by (`8..=32`, `16..=128`); need `source_rate` or `icmp_echo_rate` | `32`, `64` |
//! | `source_block` | integer `1..=86400`: seconds a prefix over `source_rate` stays blocked (new flows, packets of no flow and echo requests dropped, reason `shield-source-blocked`); needs `source_rate` | not blocked, only limited |
//! | `icmp_echo_rate` | integer `1..=100000000`: ICMP/ICMPv6 echo requests per second per source prefix (reason `shield-icmp-rate`) | no limit |
//! | `icmp_echo_global_rate` | integer `1..=100000000`: echo requests per second from all sources together (reason `shield-icmp-rate`) | no limit |
//! | `icmp_echo_max_payload` | integer `0..=65507`: the largest echo payload let through, in bytes (reason `shield-icmp-oversized`) | any |
//!
//! The per-source limits count in shared windows of 1.07 s, so the rate enforced is the one
//! configured, over all CPUs; established and related packets (ICMP errors for path MTU
//! discovery among them) are never counted nor limited.
//!
//! With SYN cookies on, the daemon sets `net.ipv4.tcp_syncookies = 2` and
//! `net.ipv4.tcp_timestamps = 2` in its network namespace: the kernel accepts the connections
//! from the cookies, and needs both to take them back with the client's options.
//!
//! # Scrub
//!
//! `[scrub]` rewrites packets on the guarded interfaces with pf's `scrub` semantics, in TC
//! ingress and egress (see `docs/design/scrub.md`). It never drops; each rewrite keeps the
//! IPv4 header and TCP checksums valid. Every rewrite is off unless its key is there.
//!
//! | key | value | default |
//! | --- | --- | --- |
//! | `min_ttl` | integer `1..=255`: IPv4 TTLs and IPv6 hop limits under it are raised to it (pf `min-ttl`) | not raised |
//! | `max_mss_v4` | integer `536..=65535`: the MSS option of IPv4 SYNs and SYN-ACKs above it is lowered to it (pf `max-mss`) | not clamped |
//! | `max_mss_v6` | integer `1220..=65535`: the same for IPv6 | not clamped |
//! | `clear_df` | boolean: clear the IPv4 don't-fragment bit (pf `no-df`) | `false` |
//! | `random_id` | boolean: a random IPv4 identification for unfragmented packets; fragments keep theirs (pf `random-id`) | `false` |
//! | `directions` | non-empty list of `"in"` (what arrives) and `"out"` (what leaves, sent or forwarded) | `["in", "out"]` |
//!
//! # NAT
//!
//! `[nat]` masquerades subnets behind the host and forwards ports, in TC on the outside
//! interface (see `docs/design/nat.md`). It turns connection tracking on (a mapping lives as
//! long as its flow's entry) and is refused with `[conntrack] enabled = false`.
//!
//! | key | value | default |
//! | --- | --- | --- |
//! | `out` | the outside interface, one of the guarded ones | required |
//! | `masquerade` | list of source subnets (IPv4 and IPv6 CIDRs, at most 16) whose flows leave through `out` with the external address | none |
//! | `address_v4`, `address_v6` | the external address of the family | the interface's first address (global, for IPv6), read when the policy is installed |
//! | `ports` | `[low, high]`, external ports handed out, `1..=65535` | `[1024, 65535]` |
//! | `[[nat.forward]]` | `proto` (`"tcp"`/`"udp"`), `port` (external), `to` (`"10.0.0.2:80"`, `"[fd00::2]:80"`); at most 1024, each (family, proto, port) once | none |
//!
//! # Load balancer
//!
//! `[lb]` and its `[[lb.service]]` tables balance VIP traffic the firewall allowed over
//! backends (see `docs/design/lb.md`).
//!
//! | `[lb]` key | value | default |
//! | --- | --- | --- |
//! | `hash_seed` | integer `0..=2^63-1`: seed of the flow hash and the Maglev tables | `0` |
//! | `flow_insert_rate` | integer `0..=10000000`: flow-table insertions per second and CPU; `0` no limit | `100000` |
//! | `encap_source_v4` | IPv4 prefix: outer sources of DSR packets, host bits from the flow hash | needed by IPv4 DSR services |
//! | `encap_source_v6` | IPv6 prefix, `/96` or longer | needed by IPv6 DSR services |
//!
//! | `[[lb.service]]` key | value | default |
//! | --- | --- | --- |
//! | `name` | string: letters, digits, `_`, `-`, `.`; unique | required |
//! | `vip` | IPv4 or IPv6 address | required |
//! | `port` | integer `1..=65535` | required |
//! | `proto` | `"tcp"` or `"udp"` | `"tcp"` |
//! | `mode` | `"dsr"` or `"dnat"` | `"dsr"` |
//! | `backends` | 1 to 256 tables `{ address = "...", weight = 1..=65535 }` of the VIP's family | required |
//! | `health` | `{ check = "tcp" \| "http", path = "/...", port, interval_ms = 50..=60000, timeout_ms = 10..=60000, fall = 1..=100, rise = 1..=100 }` | no checks; with it: `tcp`, `/`, the service's port, 200, 300, 2, 2 |
//!
//! At most 32 services; no two with the same VIP, port and protocol; a DNAT backend's address
//! and port belong to one service.
//!
//! # DHCP
//!
//! `[dhcp]` snoops DHCPv4, DHCPv6 and router advertisements on the guarded interfaces into
//! the daemon's lease table and reports (or drops) servers and routers that are not trusted
//! (see `docs/design/dhcp.md`).
//!
//! | key | value | default |
//! | --- | --- | --- |
//! | `enabled` | boolean | `true` when the section is there |
//! | `trusted` | list of IP or MAC addresses (`aa:bb:cc:dd:ee:ff`): DHCPv4 and DHCPv6 servers | none trusted |
//! | `trusted_routers` | the same, for routers sending router advertisements | none trusted |
//! | `rogue` | `"alert"` (report) or `"block"` (report and drop in the kernel) | `"alert"` |
//!
//! At most `palisade_common::dhcp::MAX_TRUSTED` (256) entries in the two lists together.
//!
//! # Errors
//!
//! Every problem in the file is reported at once, each as `file:line:column: message`
//! pointing at the offending value, or at the table when a key is missing. Unknown keys are
//! errors, so a misspelt key cannot silently do nothing. Problems inside set and list files
//! follow, each located in its own file.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use palisade_common::{
    conntrack::{STATE_NAMES, TIMEOUT_NAMES, TIMEOUTS},
    dns::entropy::MAX_BITS,
    firewall::{MAX_RATE, VLAN_UNTAGGED},
    packet::{IPPROTO_AH, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ROUTING},
};
use toml_edit::{ImDocument, InlineTable, Item, Table as TomlTable, Value};

use super::model::{
    Action, AddrMatch, AnswerBudget, CT_MAX_ENTRIES_RANGE, CT_MAX_UNVALIDATED_RANGE,
    CT_OVERLOAD_TTL_RANGE_S, CT_PER_SOURCE_RANGE, CT_TIMEOUT_RANGE_S, Cidr, Conntrack, Dns,
    DnsAction, DnsEgress, DnsMode, DnsScope, Family, Firewall, FirewallCapacity, FragmentPolicy,
    IcmpMatch, IpHeaderMatch, IpSet, LinkMatch, NameEntry, NameList, NameMatch, Negation, Policy,
    PortRange, Protocol, QueryRate, RateLimit, RatePer, Rule, Sinkhole, SourcePrefix, TcpFlags,
    parse_mac,
};
use super::namelist::{parse_list_bytes, parse_name};

mod dga;
mod dhcp;
mod dlp;
mod dnsbind;
mod dnscache;
mod geoip;
mod ids;
mod intel;
mod lb;
mod nat;
mod scrub;
mod shield;
mod tls;
use super::setfile::{family_name, parse_cidr, parse_set_file};

/// The most rules a policy may hold, counted as written (before sets or lists expand).
pub const MAX_RULES: usize = 100_000;

/// Priority given to a rule without one, plus its position in the file.
pub const IMPLICIT_PRIORITY_BASE: u32 = 1_000_000;

/// The most DNS ports a policy may list.
pub const MAX_DNS_PORTS: usize = 8;

/// DNS ports when `[dns]` gives none.
pub const DEFAULT_DNS_PORTS: [u16; 1] = [53];

/// Where `[dns.egress]` attaches when it names no cgroups: the cgroup v2 root.
pub const DEFAULT_DNS_CGROUP: &str = "/sys/fs/cgroup/unified";

/// Query type names accepted in `qtypes`, with their numbers.
pub const QTYPE_NAMES: [(&str, u16); 15] = [
    ("A", 1),
    ("NS", 2),
    ("CNAME", 5),
    ("SOA", 6),
    ("PTR", 12),
    ("MX", 15),
    ("TXT", 16),
    ("AAAA", 28),
    ("SRV", 33),
    ("DS", 43),
    ("DNSKEY", 48),
    ("SVCB", 64),
    ("HTTPS", 65),
    ("ANY", 255),
    ("CAA", 257),
];

/// One problem found in a policy or set file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct Diagnostic {
    /// The file as named to the user.
    pub file: String,
    /// 1-based line, or 0 when the problem concerns the whole file (e.g. it cannot be read).
    pub line: usize,
    /// 1-based column in characters, or 0 with line 0.
    pub column: usize,
    /// What is wrong, on one line.
    pub message: String,
}

/// Everything wrong with a policy: never empty when returned by this module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// In file order for the policy file, followed by problems in set and list files.
    pub errors: Vec<Diagnostic>,
}

impl fmt::Display for ConfigError {
    /// One line per diagnostic.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The policy used when none is configured: it drops nothing, so it can never cut an
/// operator off a server, and its rules only make common traffic visible in the counters.
pub const DEFAULT_POLICY: &str = r#"# Palisade's built-in policy, used when no policy file is given.
#
# It never drops anything, so starting Palisade on a server cannot lock anyone out,
# including you over SSH. The rules below allow traffic that the default would allow
# anyway: they exist only so that their counters show SSH and ping traffic at a glance.
#
# To write your own policy, start from a copy of this file, add rules, and switch
# `default` to "drop" only once a rule allows your own access.
#
# Connections are tracked, so the counters below only see the packets that open a
# connection: its replies and the rest of it pass as established before any rule.

[firewall]
default = "allow"        # packets no rule matches pass
log_default = false      # nothing is dropped by default, so there is nothing to log
fragments = "match-l3"   # later fragments follow address-only rules, then the default
stateful = true          # packets of established and related connections pass first

[conntrack]              # connection tracking; the values below are the defaults
# enabled = true
# max_entries = 262144        # connections tracked once validated (answered)
# max_unvalidated = 16384     # flows not answered yet (SYNs, lone UDP); least recent go
# max_per_source = 0          # open flows per outside address (0: no limit)
# new_per_source = 0          # new flows per second per outside address (0: no limit)
# overload_ttl = 600          # seconds an address over a limit stays in `overload_set`
# tcp_syn = 60                # timeouts, in seconds
# tcp_established = 21600
# tcp_closing = 120
# tcp_time_wait = 120
# tcp_close = 10
# udp = 30
# udp_replied = 180
# icmp = 30
# other = 600

[[firewall.rule]]
name = "count-ssh"
action = "allow"
proto = "tcp"
dport = 22

[[firewall.rule]]
name = "count-icmp"
action = "allow"
proto = "icmp"

[[firewall.rule]]
name = "count-icmpv6"
action = "allow"
proto = "icmpv6"
"#;

/// The parsed [`DEFAULT_POLICY`].
///
/// # Panics
///
/// Only if the embedded text were invalid, which the tests rule out.
#[must_use]
pub fn default_policy() -> Policy {
    parse_policy(DEFAULT_POLICY, "<embedded default>", Path::new("."))
        .expect("the embedded default policy is valid (checked by tests)")
}

/// Reads and parses a policy file; set files are looked up relative to its directory.
///
/// A read failure is a single diagnostic at line 0, column 0.
pub fn load_policy(path: &Path) -> Result<Policy, ConfigError> {
    let file_name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        errors: vec![Diagnostic {
            file: file_name.clone(),
            line: 0,
            column: 0,
            message: format!("cannot read policy file: {e}"),
        }],
    })?;
    let base_dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    parse_policy(&text, &file_name, base_dir)
}

/// Parses and validates policy text.
///
/// `file_name` labels diagnostics; relative set file paths are resolved against `base_dir`.
/// Returns every problem found, not just the first.
pub fn parse_policy(text: &str, file_name: &str, base_dir: &Path) -> Result<Policy, ConfigError> {
    let lines = LineIndex::new(text);
    let doc = match ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let at = e.span().map_or(0, |s| s.start);
            // The parser's message can span lines ("invalid key\nexpected ..."); a diagnostic
            // is one line.
            let message = e
                .message()
                .trim()
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join("; ");
            let (line, column) = lines.locate(at);
            return Err(ConfigError {
                errors: vec![Diagnostic {
                    file: file_name.to_owned(),
                    line,
                    column,
                    message,
                }],
            });
        }
    };
    let root = table_node(doc.as_table(), 0);
    let mut checker = Checker {
        base_dir,
        lines: &lines,
        errors: Vec::new(),
        file_errors: Vec::new(),
    };
    let policy = checker.policy(&root);
    if checker.errors.is_empty()
        && checker.file_errors.is_empty()
        && let Some(policy) = policy
    {
        return Ok(policy);
    }
    // Sorting keeps the report in file order although sets are checked before rules.
    checker.errors.sort_by_key(|&(at, _)| at);
    let mut errors: Vec<Diagnostic> = checker
        .errors
        .into_iter()
        .map(|(at, message)| {
            let (line, column) = lines.locate(at);
            Diagnostic {
                file: file_name.to_owned(),
                line,
                column,
                message,
            }
        })
        .collect();
    errors.extend(checker.file_errors);
    if errors.is_empty() {
        // Unreachable by construction (every `None` records an error), but a bug must not
        // turn into an empty error list that prints as success.
        errors.push(Diagnostic {
            file: file_name.to_owned(),
            line: 0,
            column: 0,
            message: "policy rejected without a specific error".to_owned(),
        });
    }
    Err(ConfigError { errors })
}

// ---------------------------------------------------------------------------------------
// Source positions

/// Maps byte offsets to 1-based line and character column.
struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    fn new(text: &'a str) -> Self {
        let starts = std::iter::once(0)
            .chain(
                text.bytes()
                    .enumerate()
                    .filter(|&(_, b)| b == b'\n')
                    .map(|(i, _)| i + 1),
            )
            .collect();
        Self { text, starts }
    }

    fn locate(&self, at: usize) -> (usize, usize) {
        let at = at.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= at).max(1);
        let start = self.starts[line - 1];
        let column = match self.text.get(start..at) {
            Some(prefix) => prefix.chars().count(),
            None => at - start,
        };
        (line, column + 1)
    }

    fn line(&self, at: usize) -> usize {
        self.locate(at).0
    }
}

// ---------------------------------------------------------------------------------------
// A plain tree with a source offset on every key and value
//
// toml_edit keeps spans on keys and most values but not on implicit tables (`[a.b]` creates
// `a` without a header; so does a dotted key). Copying into this tree fills each missing
// position with the position of the key that names it, so every later check has a place to
// point at.

struct Node {
    at: usize,
    val: Val,
}

enum Val {
    Str(String),
    Int(i64),
    /// No key takes a float: kept to name the type in messages.
    Float,
    Bool(bool),
    /// As TOML wrote it, e.g. `2026-12-31T00:00:00Z`.
    Datetime(String),
    Array(Vec<Node>),
    Table(Vec<Entry>),
}

struct Entry {
    key: String,
    key_at: usize,
    node: Node,
}

impl Val {
    const fn type_name(&self) -> &'static str {
        match self {
            Self::Str(_) => "a string",
            Self::Int(_) => "an integer",
            Self::Float => "a float",
            Self::Bool(_) => "a boolean",
            Self::Datetime(_) => "a date-time",
            Self::Array(_) => "an array",
            Self::Table(_) => "a table",
        }
    }
}

fn start_or(span: Option<std::ops::Range<usize>>, fallback: usize) -> usize {
    span.map_or(fallback, |s| s.start)
}

fn table_node(table: &TomlTable, fallback: usize) -> Node {
    let at = start_or(table.span(), fallback);
    let entries = table
        .iter()
        .filter_map(|(key, item)| {
            let key_at = start_or(table.key(key).and_then(toml_edit::Key::span), at);
            item_node(item, key_at).map(|node| Entry {
                key: key.to_owned(),
                key_at,
                node,
            })
        })
        .collect();
    Node {
        at,
        val: Val::Table(entries),
    }
}

fn inline_table_node(table: &InlineTable, fallback: usize) -> Node {
    let at = start_or(table.span(), fallback);
    let entries = table
        .iter()
        .map(|(key, value)| {
            let key_at = start_or(table.key(key).and_then(toml_edit::Key::span), at);
            Entry {
                key: key.to_owned(),
                key_at,
                node: value_node(value, key_at),
            }
        })
        .collect();
    Node {
        at,
        val: Val::Table(entries),
    }
}

fn item_node(item: &Item, fallback: usize) -> Option<Node> {
    match item {
        Item::None => None,
        Item::Value(v) => Some(value_node(v, fallback)),
        Item::Table(t) => Some(table_node(t, fallback)),
        Item::ArrayOfTables(tables) => {
            let at = start_or(tables.span(), fallback);
            let nodes = tables.iter().map(|t| table_node(t, at)).collect();
            Some(Node {
                at,
                val: Val::Array(nodes),
            })
        }
    }
}

fn value_node(value: &Value, fallback: usize) -> Node {
    let at = start_or(value.span(), fallback);
    let val = match value {
        Value::String(s) => Val::Str(s.value().clone()),
        Value::Integer(i) => Val::Int(*i.value()),
        Value::Float(_) => Val::Float,
        Value::Boolean(b) => Val::Bool(*b.value()),
        Value::Datetime(d) => Val::Datetime(d.value().to_string()),
        Value::Array(a) => Val::Array(a.iter().map(|v| value_node(v, at)).collect()),
        Value::InlineTable(t) => return inline_table_node(t, at),
    };
    Node { at, val }
}

/// A table node seen as its entries.
#[derive(Clone, Copy)]
struct TableView<'n> {
    at: usize,
    entries: &'n [Entry],
}

impl<'n> TableView<'n> {
    fn of(node: &'n Node) -> Option<Self> {
        match &node.val {
            Val::Table(entries) => Some(Self {
                at: node.at,
                entries,
            }),
            _ => None,
        }
    }

    fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries.iter().find(|e| e.key == key).map(|e| &e.node)
    }
}

// ---------------------------------------------------------------------------------------
// Validation

const TOP_KEYS: &[&str] = &[
    "firewall",
    "sets",
    "dns",
    "conntrack",
    "shield",
    "scrub",
    "nat",
    "lb",
    "tls",
    "dhcp",
    "intel",
    "dlp",
    "geoip",
    "ids",
];
const FIREWALL_KEYS: &[&str] = &[
    "default",
    "log_default",
    "fragments",
    "stateful",
    "rate_prefix_v4",
    "rate_prefix_v6",
    "capacity_rules",
    "capacity_set_hosts",
    "capacity_set_prefixes",
    "rule",
];
const SET_KEYS: &[&str] = &["entries", "files"];
const RULE_KEYS: &[&str] = &[
    "name",
    "priority",
    "action",
    "proto",
    "src",
    "dst",
    "sport",
    "dport",
    "tcp_flags",
    "icmp_type",
    "icmp_code",
    "state",
    "rate",
    "log",
    "dscp",
    "ecn",
    "ttl",
    "length",
    "set_mark",
    "set_dscp",
    "mirror_to",
    "src_mac",
    "dst_mac",
    "vlan",
    "iface",
    "not",
    "redirect_to",
    "route_table",
    "cpus",
    "queue_size",
];
const RATE_KEYS: &[&str] = &["pps", "burst", "per"];
const DNS_KEYS: &[&str] = &[
    "ports",
    "answer_rate",
    "answer_burst",
    "answer_prefix_v4",
    "answer_prefix_v6",
    "ingress",
    "egress",
    "lists",
    "event_rate",
    "event_sample",
    "rate_prefix_v4",
    "rate_prefix_v6",
    "bind",
    "dga",
    "cache",
    "capacity_names",
];
const INGRESS_KEYS: &[&str] = &[
    "mode",
    "action",
    "lists",
    "audit",
    "malformed",
    "rate",
    "log_allowed",
    "sinkhole_ipv4",
    "sinkhole_ipv6",
    "sinkhole_ttl",
];
const EGRESS_KEYS: &[&str] = &[
    "mode",
    "action",
    "lists",
    "audit",
    "malformed",
    "rate",
    "log_allowed",
    "cgroups",
];
const QUERY_RATE_KEYS: &[&str] = &["qps", "burst"];
const LIST_KEYS: &[&str] = &["files", "names", "subdomains", "entry"];
const LIST_ENTRY_KEYS: &[&str] = &["name", "qtypes", "max_entropy_bits", "expires"];
/// What `max_entropy_bits` replaced, and why the old value cannot be carried over.
const RETIRED_MAX_ENTROPY: &str = "`max_entropy` (an average in bits per character) is no \
    longer supported: an average let short names, padding and letter case through. Use \
    `max_entropy_bits`, the total entropy in bits of the labels below the name (case \
    counted); 256 lets ordinary host names through and stops tunnels";
/// `[conntrack]`: the switch, the two capacities, the per-source limits and their overload
/// set, then every timeout by its name.
const CONNTRACK_KEYS: [&str; 7 + TIMEOUTS] = {
    let mut keys = [""; 7 + TIMEOUTS];
    keys[0] = "enabled";
    keys[1] = "max_entries";
    keys[2] = "max_unvalidated";
    keys[3] = "max_per_source";
    keys[4] = "new_per_source";
    keys[5] = "overload_set";
    keys[6] = "overload_ttl";
    let mut i = 0;
    while i < TIMEOUTS {
        keys[7 + i] = TIMEOUT_NAMES[i];
        i += 1;
    }
    keys
};

const TCP_FLAG_NAMES: [(&str, u8); 8] = [
    ("fin", 0x01),
    ("syn", 0x02),
    ("rst", 0x04),
    ("psh", 0x08),
    ("ack", 0x10),
    ("urg", 0x20),
    ("ece", 0x40),
    ("cwr", 0x80),
];

/// What `proto` said, keeping "invalid" apart from "absent" so a bad `proto` does not also
/// make every port or flag condition an error.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ProtoField {
    Any,
    Is(Protocol),
    Invalid,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ActionKind {
    Allow,
    Drop,
    RateLimit,
    Mark,
    Mirror,
    Redirect,
    Steer,
}

/// The sets as far as rules need them: the name lookup and what families each holds.
struct SetTable {
    sets: Vec<IpSet>,
    by_name: HashMap<String, usize>,
}

/// Which address families an address condition can match (`None`: no restriction known).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Families {
    v4: bool,
    v6: bool,
}

impl Families {
    fn of(cidrs: &[Cidr]) -> Self {
        Self {
            v4: cidrs.iter().any(|c| c.family == Family::V4),
            v6: cidrs.iter().any(|c| c.family == Family::V6),
        }
    }

    const fn describe(self) -> &'static str {
        match (self.v4, self.v6) {
            (true, false) => family_name(Family::V4),
            (false, true) => family_name(Family::V6),
            _ => "IPv4 and IPv6",
        }
    }
}

struct Checker<'a> {
    base_dir: &'a Path,
    lines: &'a LineIndex<'a>,
    /// Problems in the policy file, by byte offset.
    errors: Vec<(usize, String)>,
    /// Problems inside set and list files, already located in their own files.
    file_errors: Vec<Diagnostic>,
}

fn quoted_list(items: &[&str]) -> String {
    items
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn valid_name(name: &str, extra: &[u8]) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || extra.contains(&b))
}

impl Checker<'_> {
    fn err(&mut self, at: usize, message: impl Into<String>) {
        self.errors.push((at, message.into()));
    }

    fn error_count(&self) -> usize {
        self.errors.len() + self.file_errors.len()
    }

    fn check_keys(&mut self, table: TableView<'_>, what: &str, allowed: &[&str]) {
        self.check_keys_but(table, what, allowed, &[]);
    }

    /// [`Self::check_keys`], leaving out `retired` keys (reported by the caller with what
    /// replaced them).
    fn check_keys_but(
        &mut self,
        table: TableView<'_>,
        what: &str,
        allowed: &[&str],
        retired: &[&str],
    ) {
        for entry in table.entries {
            let key = entry.key.as_str();
            if !allowed.contains(&key) && !retired.contains(&key) {
                let msg = format!(
                    "unknown key `{}` in {what}; expected one of {}",
                    entry.key,
                    quoted_list(allowed)
                );
                self.err(entry.key_at, msg);
            }
        }
    }

    fn table<'n>(&mut self, node: &'n Node, what: &str) -> Option<TableView<'n>> {
        let view = TableView::of(node);
        if view.is_none() {
            self.err(
                node.at,
                format!("{what} must be a table, found {}", node.val.type_name()),
            );
        }
        view
    }

    fn string<'n>(&mut self, node: &'n Node, key: &str) -> Option<&'n str> {
        match &node.val {
            Val::Str(s) => Some(s),
            other => {
                self.err(
                    node.at,
                    format!("`{key}` must be a string, found {}", other.type_name()),
                );
                None
            }
        }
    }

    fn boolean(&mut self, node: &Node, key: &str) -> Option<bool> {
        match node.val {
            Val::Bool(b) => Some(b),
            ref other => {
                self.err(
                    node.at,
                    format!("`{key}` must be true or false, found {}", other.type_name()),
                );
                None
            }
        }
    }

    fn integer(&mut self, node: &Node, key: &str, min: i64, max: i64) -> Option<i64> {
        match node.val {
            Val::Int(n) if (min..=max).contains(&n) => Some(n),
            Val::Int(n) => {
                self.err(
                    node.at,
                    format!("`{key}` must be between {min} and {max}, found {n}"),
                );
                None
            }
            ref other => {
                self.err(
                    node.at,
                    format!("`{key}` must be an integer, found {}", other.type_name()),
                );
                None
            }
        }
    }

    fn u8_field(&mut self, node: &Node, key: &str) -> Option<u8> {
        self.integer(node, key, 0, 255)
            .and_then(|n| u8::try_from(n).ok())
    }

    fn u32_field(&mut self, node: &Node, key: &str, min: i64) -> Option<u32> {
        self.integer(node, key, min, i64::from(u32::MAX))
            .and_then(|n| u32::try_from(n).ok())
    }

    /// A rate (tokens a second) of `whose`, between `min` and [`MAX_RATE`]; `instead` is what
    /// to write rather than a faster rate.
    fn rate_field(
        &mut self,
        node: &Node,
        key: &str,
        min: i64,
        whose: &str,
        instead: &str,
    ) -> Option<u32> {
        if let Val::Int(n) = node.val
            && n > i64::from(MAX_RATE)
        {
            let msg = format!(
                "{whose}: `{key}` = {n} is faster than the {MAX_RATE} a second a rate may be: \
                 a token bucket counts whole nanoseconds between tokens, so a faster rate would \
                 be rounded up (by more than 1 %, and above 1000000000 to no limit at all); \
                 use at most {MAX_RATE}{instead}"
            );
            self.err(node.at, msg);
            return None;
        }
        self.integer(node, key, min, i64::from(MAX_RATE))
            .and_then(|n| u32::try_from(n).ok())
    }

    /// The whole document. `None` only when an error was recorded.
    fn policy(&mut self, root: &Node) -> Option<Policy> {
        let root = TableView::of(root)?;
        self.check_keys(root, "the top level", TOP_KEYS);
        let sets = match root.get("sets") {
            Some(node) => self.sets(node),
            None => SetTable {
                sets: Vec::new(),
                by_name: HashMap::new(),
            },
        };
        // Country sets join the named ones before any rule names them.
        let (geoip, sets) = self.geoip(root.get("geoip"), root.get("firewall"), sets);
        // Before the firewall, whose `stateful` and `state` must know whether tracking is off.
        let conntrack = match root.get("conntrack") {
            Some(node) => self.conntrack(node, &sets),
            None => CtCheck {
                conntrack: Conntrack::default(),
                disabled_at: None,
            },
        };
        let firewall = match root.get("firewall") {
            Some(node) => self.firewall(node, &sets, conntrack.disabled_at),
            None => Some(Firewall::default()),
        };
        let dns = match root.get("dns") {
            Some(node) => self.dns(node),
            None => Dns {
                ports: DEFAULT_DNS_PORTS.to_vec(),
                ..Dns::default()
            },
        };
        let shield = match root.get("shield") {
            Some(node) => self.shield(node, conntrack.disabled_at),
            None => crate::shield::Shield::default(),
        };
        let scrub = match root.get("scrub") {
            Some(node) => self.scrub(node),
            None => crate::scrub::Scrub::default(),
        };
        let nat = match root.get("nat") {
            Some(node) => self.nat(node, conntrack.disabled_at),
            None => crate::nat::Nat::default(),
        };
        let lb = match root.get("lb") {
            Some(node) => self.lb(node),
            None => crate::lb::Lb::default(),
        };
        let tls = match root.get("tls") {
            Some(node) => self.tls(node, &dns),
            None => crate::tls::Tls::default(),
        };
        let dhcp = match root.get("dhcp") {
            Some(node) => self.dhcp(node),
            None => crate::dhcp::Dhcp::default(),
        };
        let intel = match root.get("intel") {
            Some(node) => self.intel(node),
            None => crate::intel::Intel::default(),
        };
        let dlp = match root.get("dlp") {
            Some(node) => self.dlp(node),
            None => crate::dlp::Dlp::default(),
        };
        let ids = match root.get("ids") {
            Some(node) => self.ids(node),
            None => crate::ids::Ids::default(),
        };
        Some(Policy {
            firewall: firewall?,
            sets: sets.sets,
            dns,
            conntrack: conntrack.conntrack,
            shield,
            scrub,
            nat,
            lb,
            tls,
            dhcp,
            intel,
            dlp,
            geoip,
            ids,
        })
    }

    fn sets(&mut self, node: &Node) -> SetTable {
        let mut table = SetTable {
            sets: Vec::new(),
            by_name: HashMap::new(),
        };
        let Some(view) = self.table(node, "`sets`") else {
            return table;
        };
        for entry in view.entries {
            let name = entry.key.as_str();
            if !valid_name(name, b"") {
                self.err(
                    entry.key_at,
                    format!("invalid set name `{name}`: use 1 to 64 of A-Z a-z 0-9 _ -"),
                );
            }
            // Registered even when broken, so rules naming it get no second, misleading error.
            table.by_name.insert(name.to_owned(), table.sets.len());
            let entries = self.set_entries(&entry.node, name);
            table.sets.push(IpSet {
                name: name.to_owned(),
                entries,
            });
        }
        table
    }

    fn set_entries(&mut self, node: &Node, name: &str) -> Vec<Cidr> {
        let mut cidrs = Vec::new();
        let what = format!("set `{name}`");
        let Some(view) = self.table(node, &what) else {
            return cidrs;
        };
        self.check_keys(view, &what, SET_KEYS);
        if let Some(list) = view.get("entries") {
            for item in self.string_list(list, "entries") {
                match parse_cidr(&item.0) {
                    Ok(c) => cidrs.push(c),
                    Err(e) => self.err(item.1, e.to_string()),
                }
            }
        }
        if let Some(list) = view.get("files") {
            for (file, at) in self.string_list(list, "files") {
                let path = self.base_dir.join(&file);
                match std::fs::read_to_string(&path) {
                    Ok(text) => match parse_set_file(&text, &path.display().to_string()) {
                        Ok(mut found) => cidrs.append(&mut found),
                        Err(mut errors) => self.file_errors.append(&mut errors),
                    },
                    Err(e) => {
                        self.err(
                            at,
                            format!("cannot read set file `{}`: {e}", path.display()),
                        );
                    }
                }
            }
        }
        cidrs
    }

    /// A list of strings with their positions; wrong types are reported and skipped.
    fn string_list(&mut self, node: &Node, key: &str) -> Vec<(String, usize)> {
        let Val::Array(items) = &node.val else {
            self.err(
                node.at,
                format!(
                    "`{key}` must be a list of strings, found {}",
                    node.val.type_name()
                ),
            );
            return Vec::new();
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            if let Some(s) = self.string(item, key) {
                out.push((s.to_owned(), item.at));
            }
        }
        out
    }

    /// `[firewall]`; `ct_disabled_at` is where `[conntrack]` says `enabled = false`, if it does.
    fn firewall(
        &mut self,
        node: &Node,
        sets: &SetTable,
        ct_disabled_at: Option<usize>,
    ) -> Option<Firewall> {
        let view = self.table(node, "`firewall`")?;
        let errors_before = self.error_count();
        self.check_keys(view, "[firewall]", FIREWALL_KEYS);
        let default_action = match view.get("default") {
            None => Action::Allow,
            Some(node) => match self.string(node, "default") {
                Some("allow") => Action::Allow,
                Some("drop") => Action::Drop,
                Some("rate-limit") => {
                    self.err(
                        node.at,
                        "the default action cannot be `rate-limit`; use `allow` or `drop`",
                    );
                    Action::Allow
                }
                Some(other) => {
                    let msg =
                        format!("unknown default action `{other}`; expected `allow` or `drop`");
                    self.err(node.at, msg);
                    Action::Allow
                }
                None => Action::Allow,
            },
        };
        let log_default = view
            .get("log_default")
            .and_then(|n| self.boolean(n, "log_default"));
        let fragments = match view.get("fragments") {
            None => FragmentPolicy::MatchL3,
            Some(node) => match self.string(node, "fragments") {
                Some("drop") => FragmentPolicy::Drop,
                Some("match-l3") => FragmentPolicy::MatchL3,
                Some(other) => {
                    let msg =
                        format!("unknown fragment policy `{other}`; expected `drop` or `match-l3`");
                    self.err(node.at, msg);
                    FragmentPolicy::MatchL3
                }
                None => FragmentPolicy::MatchL3,
            },
        };
        let stateful = view.get("stateful").and_then(|node| {
            let stateful = self.boolean(node, "stateful")?;
            if stateful && let Some(at) = ct_disabled_at {
                let msg = format!(
                    "`stateful = true` needs connection tracking, but [conntrack] turns it off \
                     (`enabled = false` on line {})",
                    self.lines.line(at)
                );
                self.err(node.at, msg);
            }
            Some(stateful)
        });
        let rules = match view.get("rule") {
            None => Vec::new(),
            Some(node) => self.rules(node, view.at, sets, ct_disabled_at),
        };
        let rate_prefix = self.source_prefix(view);
        let capacity = FirewallCapacity {
            rules: self.capacity(view, crate::capacity::Kind::Rules),
            set_hosts: self.capacity(view, crate::capacity::Kind::SetHosts),
            set_prefixes: self.capacity(view, crate::capacity::Kind::SetPrefixes),
        };
        (self.error_count() == errors_before).then_some(Firewall {
            rate_prefix,
            capacity,
            default_action,
            log_default: log_default.unwrap_or(false),
            fragments,
            stateful: stateful.unwrap_or(false),
            rules,
        })
    }

    /// The capacity setting of `kind` in `view` (`[firewall]` or `[dns]`): `1..=` its hard
    /// maximum, 0 when not set.
    fn capacity(&mut self, view: TableView<'_>, kind: crate::capacity::Kind) -> u32 {
        let key = kind.setting().rsplit(' ').next().unwrap_or_default();
        view.get(key)
            .and_then(|n| self.integer(n, key, 1, i64::from(kind.hard_max())))
            .map_or(0, |v| v as u32)
    }

    /// `rate_prefix_v4` and `rate_prefix_v6` of `[firewall]` or `[dns]`: how per-source rate
    /// buckets group addresses. 0 is refused: it is how the kernel reads a policy written
    /// before the setting existed (whole addresses), and `per = "rule"` already shares one
    /// bucket among all sources.
    fn source_prefix(&mut self, view: TableView<'_>) -> SourcePrefix {
        let mut prefix = SourcePrefix::DEFAULT;
        if let Some(n) = view.get("rate_prefix_v4") {
            prefix.v4 = self
                .integer(n, "rate_prefix_v4", 1, 32)
                .map_or(prefix.v4, |v| v as u8);
        }
        if let Some(n) = view.get("rate_prefix_v6") {
            prefix.v6 = self
                .integer(n, "rate_prefix_v6", 1, 128)
                .map_or(prefix.v6, |v| v as u8);
        }
        prefix
    }

    fn rules(
        &mut self,
        node: &Node,
        firewall_at: usize,
        sets: &SetTable,
        ct_disabled_at: Option<usize>,
    ) -> Vec<Rule> {
        let items = match &node.val {
            Val::Array(items) => items,
            Val::Table(_) => {
                self.err(
                    node.at,
                    "`rule` must be an array of tables: write each rule under [[firewall.rule]]",
                );
                return Vec::new();
            }
            other => {
                let msg = format!(
                    "`rule` must be an array of tables, found {}",
                    other.type_name()
                );
                self.err(node.at, msg);
                return Vec::new();
            }
        };
        if items.len() > MAX_RULES {
            let msg = format!(
                "too many firewall rules: {} (at most {MAX_RULES})",
                items.len()
            );
            self.err(firewall_at, msg);
        }
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut rules = Vec::with_capacity(items.len());
        for (position, item) in items.iter().enumerate() {
            let Some(view) = self.table(item, "each firewall rule") else {
                continue;
            };
            if let Some(rule) = self.rule(view, position, sets, &mut names, ct_disabled_at) {
                rules.push(rule);
            }
        }
        let redirect_ifaces: std::collections::BTreeSet<u32> = rules
            .iter()
            .filter_map(|r| match r.action {
                Action::Redirect(super::model::Redirect::Iface(m)) => Some(m.ifindex),
                _ => None,
            })
            .collect();
        if redirect_ifaces.len() > palisade_common::redirect::MAX_REDIRECT_IFACES as usize {
            let msg = format!(
                "`redirect_to` names {} interfaces (at most {})",
                redirect_ifaces.len(),
                palisade_common::redirect::MAX_REDIRECT_IFACES
            );
            self.err(firewall_at, msg);
        }
        // Stable, so equal priorities keep file order.
        rules.sort_by_key(|r| r.priority);
        rules
    }

    /// One rule; `None` when it had any error (all of them recorded).
    fn rule(
        &mut self,
        view: TableView<'_>,
        position: usize,
        sets: &SetTable,
        names: &mut HashMap<String, usize>,
        ct_disabled_at: Option<usize>,
    ) -> Option<Rule> {
        let errors_before = self.error_count();
        let line = self.lines.line(view.at);
        self.check_keys(view, "firewall rule", RULE_KEYS);

        let name = view.get("name").and_then(|node| {
            let name = self.string(node, "name")?;
            if !valid_name(name, b".") {
                let msg = format!("invalid rule name `{name}`: use 1 to 64 of A-Z a-z 0-9 _ . -");
                self.err(node.at, msg);
                return None;
            }
            if let Some(first) = names.get(name) {
                let msg = format!("duplicate rule name `{name}` (first used on line {first})");
                self.err(node.at, msg);
                return None;
            }
            names.insert(name.to_owned(), self.lines.line(node.at));
            Some(name.to_owned())
        });

        let priority = match view.get("priority") {
            Some(node) => self.u32_field(node, "priority", 0),
            None => Some(
                u32::try_from(position)
                    .unwrap_or(u32::MAX)
                    .saturating_add(IMPLICIT_PRIORITY_BASE),
            ),
        };

        let action_node = view.get("action");
        let action_kind = match action_node {
            None => {
                self.err(
                    view.at,
                    "firewall rule is missing `action` (one of `allow`, `drop`, `rate-limit`, `mark`, `mirror`)",
                );
                None
            }
            Some(node) => match self.string(node, "action") {
                Some("allow") => Some(ActionKind::Allow),
                Some("drop") => Some(ActionKind::Drop),
                Some("rate-limit") => Some(ActionKind::RateLimit),
                Some("mark") => Some(ActionKind::Mark),
                Some("mirror") => Some(ActionKind::Mirror),
                Some("redirect") => Some(ActionKind::Redirect),
                Some("steer") => Some(ActionKind::Steer),
                Some(other) => {
                    let msg = format!(
                        "unknown action `{other}`; expected `allow`, `drop`, `rate-limit`, \
                         `mark`, `mirror`, `redirect` or `steer`"
                    );
                    self.err(node.at, msg);
                    None
                }
                None => None,
            },
        };
        let whose = name.as_ref().map_or_else(
            || format!("the rule on line {line}"),
            |n| format!("rule `{n}`"),
        );
        let rate = view.get("rate").and_then(|node| self.rate(node, &whose));
        match (action_kind, action_node, view.get("rate")) {
            (Some(ActionKind::RateLimit), Some(node), None) => self.err(
                node.at,
                "action `rate-limit` needs a `rate`, e.g. rate = { pps = 100, burst = 200 }",
            ),
            (
                Some(
                    ActionKind::Allow
                    | ActionKind::Drop
                    | ActionKind::Mark
                    | ActionKind::Mirror
                    | ActionKind::Redirect
                    | ActionKind::Steer,
                ),
                _,
                Some(node),
            ) => {
                self.err(
                    node.at,
                    "`rate` is only allowed with action = \"rate-limit\"",
                );
            }
            _ => {}
        }

        let mark = self.mark_action(view, action_kind, action_node);
        let mirror = self.mirror_action(view, action_kind, action_node);
        let redirect = self.redirect_action(view, action_kind, action_node);
        let steer = self.steer_action(view, action_kind, action_node);

        let log = view
            .get("log")
            .and_then(|n| self.boolean(n, "log"))
            .unwrap_or(false);
        // A string condition written with `!` in front (`src = "!10.0.0.0/8"`, `dport = "!22"`,
        // `proto = "!udp"`, `src = "!@set"`) is the condition negated, as `not` says it.
        let banged: Vec<(&str, Node)> = Negation::NAMES
            .into_iter()
            .filter_map(|key| match view.get(key) {
                Some(Node {
                    at,
                    val: Val::Str(text),
                }) => text.trim_start().strip_prefix('!').map(|rest| {
                    (
                        key,
                        Node {
                            at: *at,
                            val: Val::Str(rest.trim_start().to_owned()),
                        },
                    )
                }),
                _ => None,
            })
            .collect();
        let cond = |key: &str| {
            banged
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, n)| n)
                .or_else(|| view.get(key))
        };
        let proto = match cond("proto") {
            None => ProtoField::Any,
            Some(node) => self.proto(node),
        };

        let src = cond("src").map(|n| self.addr_match(n, "src", sets));
        let dst = cond("dst").map(|n| self.addr_match(n, "dst", sets));

        let ports_ok = matches!(proto, ProtoField::Is(Protocol::Tcp | Protocol::Udp));
        let port = |this: &mut Self, key: &str| {
            let node = cond(key)?;
            let range = this.port_range(node, key);
            if !ports_ok && proto != ProtoField::Invalid {
                this.err(node.at, format!("`{key}` needs proto = \"tcp\" or \"udp\""));
            }
            range
        };
        let src_ports = port(self, "sport");
        let dst_ports = port(self, "dport");

        let tcp_flags = view.get("tcp_flags").and_then(|node| {
            let flags = self.tcp_flags(node);
            if !matches!(proto, ProtoField::Is(Protocol::Tcp) | ProtoField::Invalid) {
                self.err(node.at, "`tcp_flags` needs proto = \"tcp\"");
            }
            flags
        });

        let icmp_type = view.get("icmp_type").and_then(|node| {
            let value = self.u8_field(node, "icmp_type");
            let icmp = matches!(
                proto,
                ProtoField::Is(Protocol::Icmp | Protocol::Icmpv6) | ProtoField::Invalid
            );
            if !icmp {
                self.err(node.at, "`icmp_type` needs proto = \"icmp\" or \"icmpv6\"");
            }
            value
        });
        let icmp_code = view.get("icmp_code").and_then(|node| {
            let value = self.u8_field(node, "icmp_code");
            if view.get("icmp_type").is_none() {
                self.err(node.at, "`icmp_code` needs `icmp_type`");
            }
            value
        });

        let state = view.get("state").and_then(|node| {
            let state = self.state(node);
            if let Some(at) = ct_disabled_at {
                let msg = format!(
                    "`state` needs connection tracking, but [conntrack] turns it off \
                     (`enabled = false` on line {})",
                    self.lines.line(at)
                );
                self.err(node.at, msg);
            }
            state
        });

        let ip = IpHeaderMatch {
            dscp: view.get("dscp").and_then(|node| self.dscp(node)),
            ecn: view.get("ecn").and_then(|node| self.ecn(node)),
            ttl: view.get("ttl").and_then(|node| self.ttl(node)),
            length: view.get("length").and_then(|node| self.length(node)),
        };
        let link = LinkMatch {
            src_mac: view
                .get("src_mac")
                .and_then(|node| self.mac(node, "src_mac")),
            dst_mac: view
                .get("dst_mac")
                .and_then(|node| self.mac(node, "dst_mac")),
            vlan: view.get("vlan").and_then(|node| self.vlan(node)),
            ..LinkMatch::default()
        };
        let link = match view.get("iface").and_then(|node| self.iface_list(node)) {
            Some((first, more)) => LinkMatch {
                iface: Some(first),
                more_ifaces: more,
                ..link
            },
            None => link,
        };

        let mut not = view
            .get("not")
            .and_then(|node| self.negation(node, &view))
            .unwrap_or_default();
        for (key, node) in &banged {
            let flag = match *key {
                "src" => &mut not.src,
                "dst" => &mut not.dst,
                "sport" => &mut not.sport,
                "dport" => &mut not.dport,
                _ => &mut not.proto,
            };
            if *flag {
                self.err(
                    node.at,
                    format!("`{key}` is negated twice, by `!` and by `not`"),
                );
            }
            *flag = true;
            if *key == "proto" {
                if proto == ProtoField::Any {
                    self.err(node.at, "`proto = \"!any\"` can never match");
                }
                if let Some(other) = ["sport", "dport", "tcp_flags", "icmp_type"]
                    .into_iter()
                    .find(|k| view.get(k).is_some())
                {
                    self.err(
                        node.at,
                        format!("`!` cannot negate `proto` in a rule with `{other}`"),
                    );
                }
            }
        }

        // Families are only compared once both sides parsed; a broken side already has its
        // own error. A negated side matches addresses of both families.
        if let (Some(Some(s)), Some(Some(d)), Some(dst_node)) = (&src, &dst, view.get("dst"))
            && !not.src
            && !not.dst
            && let (Some(sf), Some(df)) = (families(s, sets), families(d, sets))
            && !(sf.v4 && df.v4 || sf.v6 && df.v6)
        {
            let msg = format!(
                "`src` matches only {} addresses and `dst` only {} ones, so this rule can never \
                 match",
                sf.describe(),
                df.describe()
            );
            self.err(dst_node.at, msg);
        }

        // A protocol number the IPv6 parser walks past can never be the protocol of an IPv6
        // packet; refused unless the rule is limited to IPv4.
        if let ProtoField::Is(Protocol::Other(n)) = proto
            && let Some(header) = ipv6_extension_header(n)
            && let Some(node) = view.get("proto")
        {
            let can_match = |m: &Option<Option<AddrMatch>>| match m {
                Some(Some(m)) => families(m, sets).is_none_or(|f| f.v6),
                _ => true,
            };
            if can_match(&src) && can_match(&dst) {
                let msg = if n == IPPROTO_AH {
                    format!(
                        "{whose}: `proto = {n}` ({header}) matches only IPv4 packets: in IPv6 AH \
                         is an extension header, which Palisade walks past to match the protocol \
                         after it, so the rule could never match an IPv6 packet. Limit the rule \
                         to IPv4 addresses (e.g. `src = \"0.0.0.0/0\"`) to match IPv4 AH, and \
                         match IPv6 packets by the protocol after the header (e.g. `proto = \
                         \"tcp\"`)"
                    )
                } else {
                    format!(
                        "{whose}: `proto = {n}` names the IPv6 {header} extension header, which \
                         Palisade walks past to match the protocol after it, so the rule could \
                         never match an IPv6 packet. Write the protocol after the header (e.g. \
                         `proto = \"tcp\"`), or limit the rule to IPv4 addresses if IPv4 packets \
                         with protocol number {n} are meant"
                    )
                };
                self.err(node.at, msg);
            }
        }

        if self.error_count() != errors_before {
            return None;
        }
        let action = match action_kind? {
            ActionKind::Allow => Action::Allow,
            ActionKind::Drop => Action::Drop,
            ActionKind::RateLimit => Action::RateLimit(rate?),
            ActionKind::Mark => Action::Mark(mark?),
            ActionKind::Mirror => Action::Mirror(mirror?),
            ActionKind::Redirect => Action::Redirect(redirect?),
            ActionKind::Steer => Action::Steer(steer?),
        };
        let protocol = match proto {
            ProtoField::Any => None,
            ProtoField::Is(p) => Some(p),
            ProtoField::Invalid => return None,
        };
        Some(Rule {
            name,
            priority: priority?,
            action,
            log,
            src: src.unwrap_or(Some(AddrMatch::Any))?,
            dst: dst.unwrap_or(Some(AddrMatch::Any))?,
            protocol,
            src_ports,
            dst_ports,
            tcp_flags,
            icmp: icmp_type.map(|icmp_type| IcmpMatch {
                icmp_type,
                code: icmp_code,
            }),
            state,
            ip,
            link,
            not,
            line,
        })
    }

    /// A `mark` rule's `set_mark` and `set_dscp` (at least one); errors for either key on
    /// another action. `None` when not a `mark` rule or on any error.
    fn mark_action(
        &mut self,
        view: TableView<'_>,
        kind: Option<ActionKind>,
        action_node: Option<&Node>,
    ) -> Option<super::model::Mark> {
        let is_mark = kind == Some(ActionKind::Mark);
        let errors_before = self.error_count();
        let mark = view.get("set_mark").and_then(|node| {
            if !is_mark {
                self.err(node.at, "`set_mark` is only allowed with action = \"mark\"");
                return None;
            }
            self.integer(node, "set_mark", 0, i64::from(u32::MAX))
                .map(|n| n as u32)
        });
        let dscp = view.get("set_dscp").and_then(|node| {
            if !is_mark {
                self.err(node.at, "`set_dscp` is only allowed with action = \"mark\"");
                return None;
            }
            match &node.val {
                Val::Str(name) => {
                    let v = dscp_by_name(name);
                    if v.is_none() {
                        let msg = format!(
                            "unknown DSCP name `{name}` in `set_dscp`; expected a number 0 to \
                             63, `cs0`..`cs7`, `af11`..`af43`, `ef` or `va`"
                        );
                        self.err(node.at, msg);
                    }
                    v
                }
                _ => self.integer(node, "set_dscp", 0, 63).map(|n| n as u8),
            }
        });
        if !is_mark {
            return None;
        }
        if view.get("set_mark").is_none() && view.get("set_dscp").is_none() {
            let at = action_node.map_or(view.at, |n| n.at);
            self.err(
                at,
                "action `mark` needs `set_mark` (a 32-bit mark, e.g. set_mark = 0x10) or \
                 `set_dscp` (0 to 63 or a name such as \"ef\"), or both",
            );
        }
        if self.error_count() != errors_before {
            return None;
        }
        Some(super::model::Mark { mark, dscp })
    }

    /// A `redirect` rule's `redirect_to` (an interface, resolved here) or `route_table`;
    /// errors for either key on another action. `None` when not a `redirect` rule or on error.
    fn redirect_action(
        &mut self,
        view: TableView<'_>,
        kind: Option<ActionKind>,
        action_node: Option<&Node>,
    ) -> Option<super::model::Redirect> {
        let is_redirect = kind == Some(ActionKind::Redirect);
        let errors_before = self.error_count();
        let iface = view.get("redirect_to").and_then(|node| {
            if !is_redirect {
                self.err(
                    node.at,
                    "`redirect_to` is only allowed with action = \"redirect\"",
                );
                return None;
            }
            let name = self.string(node, "redirect_to")?;
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
                let msg =
                    format!("`redirect_to` = `{name}` is not an interface name (1 to 15 bytes)");
                self.err(node.at, msg);
                return None;
            }
            let Some(ifindex) = crate::attach::ifindex(name) else {
                let msg = format!(
                    "`redirect_to`: there is no network interface named `{name}` (interfaces \
                     are resolved when the policy is loaded)"
                );
                self.err(node.at, msg);
                return None;
            };
            let mut n = [0u8; 16];
            n[..name.len()].copy_from_slice(name.as_bytes());
            Some(super::model::Mirror { ifindex, name: n })
        });
        let table = view.get("route_table").and_then(|node| {
            if !is_redirect {
                self.err(
                    node.at,
                    "`route_table` is only allowed with action = \"redirect\"",
                );
                return None;
            }
            self.integer(node, "route_table", 1, i64::from(u32::MAX))
                .map(|n| n as u32)
        });
        if !is_redirect {
            return None;
        }
        match (view.get("redirect_to"), view.get("route_table")) {
            (None, None) => {
                let at = action_node.map_or(view.at, |n| n.at);
                self.err(
                    at,
                    "action `redirect` needs `redirect_to` (an interface, e.g. redirect_to = \
                     \"eth2\") or `route_table` (a routing table, e.g. route_table = 100)",
                );
            }
            (Some(_), Some(node)) => self.err(
                node.at,
                "`route_table` and `redirect_to` exclude each other: a redirect goes either \
                 out of one interface or to a routing table's next hop",
            ),
            _ => {}
        }
        if self.error_count() != errors_before {
            return None;
        }
        match (iface, table) {
            (Some(m), None) => Some(super::model::Redirect::Iface(m)),
            (None, Some(t)) => Some(super::model::Redirect::Table(t)),
            _ => None,
        }
    }

    /// A `steer` rule's `cpus` and `queue_size`; errors for either key on another action.
    /// `None` when not a `steer` rule or on error.
    fn steer_action(
        &mut self,
        view: TableView<'_>,
        kind: Option<ActionKind>,
        action_node: Option<&Node>,
    ) -> Option<super::model::Steer> {
        use palisade_common::steer::{
            DEFAULT_QUEUE_SIZE, MAX_QUEUE_SIZE, MAX_RULE_CPUS, STEER_MAX_CPU,
        };
        let is_steer = kind == Some(ActionKind::Steer);
        let errors_before = self.error_count();
        let queue_size = view.get("queue_size").and_then(|node| {
            if !is_steer {
                self.err(
                    node.at,
                    "`queue_size` is only allowed with action = \"steer\"",
                );
                return None;
            }
            self.integer(node, "queue_size", 1, i64::from(MAX_QUEUE_SIZE))
                .map(|n| n as u32)
        });
        let Some(node) = view.get("cpus") else {
            if is_steer {
                let at = action_node.map_or(view.at, |n| n.at);
                self.err(
                    at,
                    "action `steer` needs `cpus`, the CPUs its flows are spread over (e.g. \
                     cpus = [0, 1])",
                );
            }
            return None;
        };
        if !is_steer {
            self.err(node.at, "`cpus` is only allowed with action = \"steer\"");
            return None;
        }
        let Val::Array(items) = &node.val else {
            self.err(
                node.at,
                "`cpus` must be an array of CPU numbers, e.g. cpus = [0, 1]",
            );
            return None;
        };
        if items.is_empty() || items.len() > MAX_RULE_CPUS {
            let msg = format!(
                "`cpus` must name 1 to {MAX_RULE_CPUS} CPUs, found {}",
                items.len()
            );
            self.err(node.at, msg);
            return None;
        }
        let online = aya::util::online_cpus().unwrap_or_default();
        let mut cpus = [0u8; MAX_RULE_CPUS];
        for (i, item) in items.iter().enumerate() {
            let Some(c) = self.integer(item, "cpus", 0, i64::from(STEER_MAX_CPU) - 1) else {
                continue;
            };
            if cpus[..i].contains(&(c as u8)) {
                self.err(item.at, format!("CPU {c} is named twice in `cpus`"));
            } else if !online.contains(&(c as u32)) {
                self.err(
                    item.at,
                    format!("`cpus`: CPU {c} is not online on this host (online: {online:?})"),
                );
            }
            cpus[i] = c as u8;
        }
        if self.error_count() != errors_before {
            return None;
        }
        Some(super::model::Steer {
            cpus,
            n: items.len() as u8,
            queue_size: queue_size.unwrap_or(DEFAULT_QUEUE_SIZE),
        })
    }

    /// A `mirror` rule's `mirror_to`: an interface name, resolved to its index here (in the
    /// network namespace that loads the policy). `None` when not a `mirror` rule or on error.
    fn mirror_action(
        &mut self,
        view: TableView<'_>,
        kind: Option<ActionKind>,
        action_node: Option<&Node>,
    ) -> Option<super::model::Mirror> {
        let is_mirror = kind == Some(ActionKind::Mirror);
        let Some(node) = view.get("mirror_to") else {
            if is_mirror {
                let at = action_node.map_or(view.at, |n| n.at);
                self.err(
                    at,
                    "action `mirror` needs `mirror_to`, the interface that gets the copies \
                     (e.g. mirror_to = \"eth2\")",
                );
            }
            return None;
        };
        if !is_mirror {
            self.err(
                node.at,
                "`mirror_to` is only allowed with action = \"mirror\"",
            );
            return None;
        }
        let name = self.string(node, "mirror_to")?;
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
            let msg = format!("`mirror_to` = `{name}` is not an interface name (1 to 15 bytes)");
            self.err(node.at, msg);
            return None;
        }
        let Some(ifindex) = crate::attach::ifindex(name) else {
            let msg = format!(
                "`mirror_to`: there is no network interface named `{name}` (interfaces are \
                 resolved when the policy is loaded)"
            );
            self.err(node.at, msg);
            return None;
        };
        let mut n = [0u8; 16];
        n[..name.len()].copy_from_slice(name.as_bytes());
        Some(super::model::Mirror { ifindex, name: n })
    }

    /// `not`: a list of the rule's own conditions to negate, among `src`, `dst`, `sport`,
    /// `dport` and `proto`.
    fn negation(&mut self, node: &Node, view: &TableView<'_>) -> Option<Negation> {
        let items: Vec<&Node> = match &node.val {
            Val::Array(items) => items.iter().collect(),
            Val::Str(_) => vec![node],
            other => {
                let msg = format!(
                    "`not` must be a list of conditions to negate (e.g. [\"src\", \"dport\"]), \
                     found {}",
                    other.type_name()
                );
                self.err(node.at, msg);
                return None;
            }
        };
        let mut not = Negation::default();
        let mut ok = true;
        for item in items {
            let Some(name) = self.string(item, "not") else {
                ok = false;
                continue;
            };
            let flag = match name {
                "src" => &mut not.src,
                "dst" => &mut not.dst,
                "sport" => &mut not.sport,
                "dport" => &mut not.dport,
                "proto" => &mut not.proto,
                other => {
                    let msg = format!(
                        "`not` cannot negate `{other}`; it takes {}",
                        quoted_list(&Negation::NAMES)
                    );
                    self.err(item.at, msg);
                    ok = false;
                    continue;
                }
            };
            if *flag {
                self.err(item.at, format!("`{name}` is negated twice in `not`"));
                ok = false;
            } else if view.get(name).is_none() {
                self.err(
                    item.at,
                    format!("`not` negates `{name}`, but the rule has no `{name}` condition"),
                );
                ok = false;
            }
            if name == "proto"
                && let Some(key) = ["sport", "dport", "tcp_flags", "icmp_type"]
                    .into_iter()
                    .find(|k| view.get(k).is_some())
            {
                // Those conditions mean something for one protocol only.
                self.err(
                    item.at,
                    format!("`not` cannot negate `proto` in a rule with `{key}`"),
                );
                ok = false;
            }
            *flag = true;
        }
        ok.then_some(not)
    }

    /// `iface`: an interface name or a list of them (at most
    /// [`super::model::MAX_RULE_IFACES`], each once): the first, and the rest padded with 0.
    fn iface_list(
        &mut self,
        node: &Node,
    ) -> Option<(u32, [u32; super::model::MAX_RULE_IFACES - 1])> {
        let Val::Array(items) = &node.val else {
            return self
                .iface(node)
                .map(|i| (i, [0; super::model::MAX_RULE_IFACES - 1]));
        };
        if items.is_empty() || items.len() > super::model::MAX_RULE_IFACES {
            self.err(
                node.at,
                format!(
                    "`iface` lists 1 to {} interfaces, found {}",
                    super::model::MAX_RULE_IFACES,
                    items.len()
                ),
            );
            return None;
        }
        let mut found: Vec<u32> = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            match self.iface(item) {
                Some(i) if found.contains(&i) => {
                    self.err(item.at, "this interface is already in the `iface` list");
                    ok = false;
                }
                Some(i) => found.push(i),
                None => ok = false,
            }
        }
        if !ok {
            return None;
        }
        let mut more = [0; super::model::MAX_RULE_IFACES - 1];
        for (slot, i) in more.iter_mut().zip(&found[1..]) {
            *slot = *i;
        }
        Some((found[0], more))
    }

    /// One interface name of `iface`, resolved to its index here, when the policy is loaded.
    fn iface(&mut self, node: &Node) -> Option<u32> {
        let Val::Str(name) = &node.val else {
            let msg = format!(
                "`iface` must be an interface name, found {}",
                node.val.type_name()
            );
            self.err(node.at, msg);
            return None;
        };
        match crate::attach::ifindex(name.trim()) {
            Some(index) => Some(index),
            None => {
                self.err(
                    node.at,
                    format!(
                        "no interface named `{name}` on this host (`iface` is resolved when the \
                         policy is loaded)"
                    ),
                );
                None
            }
        }
    }

    /// `vlan`: the id of the outermost tag, `0..=4095`, or `"untagged"`.
    fn vlan(&mut self, node: &Node) -> Option<u16> {
        match &node.val {
            Val::Int(_) => self.integer(node, "vlan", 0, 4095).map(|n| n as u16),
            Val::Str(text) if text.trim() == "untagged" => Some(VLAN_UNTAGGED),
            Val::Str(text) => {
                self.err(
                    node.at,
                    format!(
                        "invalid VLAN `{text}` in `vlan`; expected an id 0 to 4095 or \"untagged\""
                    ),
                );
                None
            }
            other => {
                let msg = format!(
                    "`vlan` must be an id 0 to 4095 or \"untagged\", found {}",
                    other.type_name()
                );
                self.err(node.at, msg);
                None
            }
        }
    }

    /// `src_mac` / `dst_mac`: an exact MAC address, `"aa:bb:cc:dd:ee:ff"`.
    fn mac(&mut self, node: &Node, key: &str) -> Option<[u8; 6]> {
        let parsed = match &node.val {
            Val::Str(text) => parse_mac(text).ok_or_else(|| {
                format!(
                    "invalid MAC address `{text}` in `{key}`; expected six hex pairs such as \
                     \"02:00:5e:10:00:01\""
                )
            }),
            other => Err(format!(
                "`{key}` must be a MAC address string, found {}",
                other.type_name()
            )),
        };
        match parsed {
            Ok(mac) => Some(mac),
            Err(e) => {
                self.err(node.at, e);
                None
            }
        }
    }

    /// `dscp`: a code point `0..=63` or its name (RFC 2474 class selectors, RFC 2597 assured
    /// forwarding, RFC 3246 expedited forwarding, RFC 5865 voice admit).
    fn dscp(&mut self, node: &Node) -> Option<u8> {
        match &node.val {
            Val::Int(_) => self.integer(node, "dscp", 0, 63).map(|n| n as u8),
            Val::Str(name) => match dscp_by_name(name) {
                Some(v) => Some(v),
                None => {
                    let msg = format!(
                        "unknown DSCP name `{name}`; expected a number 0 to 63, `cs0`..`cs7`, \
                         `af11`..`af43`, `ef` or `va`"
                    );
                    self.err(node.at, msg);
                    None
                }
            },
            other => {
                let msg = format!(
                    "`dscp` must be a number 0 to 63 or a name like \"ef\", found {}",
                    other.type_name()
                );
                self.err(node.at, msg);
                None
            }
        }
    }

    /// `ecn`: a codepoint `0..=3` or its RFC 3168 name.
    fn ecn(&mut self, node: &Node) -> Option<u8> {
        match &node.val {
            Val::Int(_) => self.integer(node, "ecn", 0, 3).map(|n| n as u8),
            Val::Str(name) => match name.as_str() {
                "not-ect" => Some(0),
                "ect1" => Some(1),
                "ect0" => Some(2),
                "ce" => Some(3),
                _ => {
                    let msg = format!(
                        "unknown ECN codepoint `{name}`; expected `not-ect`, `ect1`, `ect0`, `ce` \
                         or a number 0 to 3"
                    );
                    self.err(node.at, msg);
                    None
                }
            },
            other => {
                let msg = format!(
                    "`ecn` must be a codepoint name like \"ce\" or a number 0 to 3, found {}",
                    other.type_name()
                );
                self.err(node.at, msg);
                None
            }
        }
    }

    /// `ttl`: a value or a `"LO-HI"` range within `0..=255`.
    fn ttl(&mut self, node: &Node) -> Option<(u8, u8)> {
        self.range(node, "ttl", "TTL", 255)
            .map(|(lo, hi)| (lo as u8, hi as u8))
    }

    /// `length`: a value or a `"LO-HI"` range within `0..=65535`.
    fn length(&mut self, node: &Node) -> Option<(u16, u16)> {
        self.range(node, "length", "length", 65535)
    }

    /// A value `N` (integer or string) or a `"LO-HI"` range with `LO <= HI <= max`, for the
    /// rule key `key`; `what` names the value in messages.
    fn range(&mut self, node: &Node, key: &str, what: &str, max: u16) -> Option<(u16, u16)> {
        let parse = |text: &str| -> Result<u16, String> {
            let text = text.trim();
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("invalid {what} `{text}` in `{key}`"));
            }
            text.parse::<u16>()
                .ok()
                .filter(|v| *v <= max)
                .ok_or_else(|| format!("{what} {text} is out of range 0 to {max}"))
        };
        let range = match &node.val {
            Val::Int(n) => u16::try_from(*n)
                .ok()
                .filter(|v| *v <= max)
                .map(|t| (t, t))
                .ok_or_else(|| format!("{what} {n} is out of range 0 to {max}")),
            Val::Str(text) => match text.split_once('-') {
                None => parse(text).map(|t| (t, t)),
                Some((lo, hi)) => match (parse(lo), parse(hi)) {
                    (Ok(lo), Ok(hi)) if lo <= hi => Ok((lo, hi)),
                    (Ok(lo), Ok(hi)) => Err(format!(
                        "{what} range {lo}-{hi} is reversed; the low value comes first"
                    )),
                    (Err(e), _) | (_, Err(e)) => Err(e),
                },
            },
            other => Err(format!(
                "`{key}` must be a number or a \"LO-HI\" range, found {}",
                other.type_name()
            )),
        };
        range.map_err(|msg| self.err(node.at, msg)).ok()
    }

    /// `state`: one state name, or a non-empty list of distinct ones. The bitmask of
    /// `palisade_common::conntrack::STATE_*` bits.
    fn state(&mut self, node: &Node) -> Option<u8> {
        let expected = || {
            let names: Vec<String> = STATE_NAMES.iter().map(|n| format!("`{n}`")).collect();
            let (last, rest) = names.split_last().expect("state names");
            format!("{} or {last}", rest.join(", "))
        };
        let items: &[Node] = match &node.val {
            Val::Str(_) => std::slice::from_ref(node),
            Val::Array(items) if items.is_empty() => {
                self.err(
                    node.at,
                    "empty `state` list can never match; leave `state` out to match packets in \
                     any state",
                );
                return None;
            }
            Val::Array(items) => items,
            other => {
                let msg = format!(
                    "`state` must be a state name or a list of them, found {}",
                    other.type_name()
                );
                self.err(node.at, msg);
                return None;
            }
        };
        let mut mask = 0u8;
        let mut ok = true;
        for item in items {
            let Some(name) = self.string(item, "state") else {
                ok = false;
                continue;
            };
            match STATE_NAMES.iter().position(|n| *n == name) {
                Some(i) if mask & (1 << i) != 0 => {
                    self.err(item.at, format!("state `{name}` is listed twice"));
                    ok = false;
                }
                Some(i) => mask |= 1 << i,
                None => {
                    let msg = format!("unknown state `{name}`; expected {}", expected());
                    self.err(item.at, msg);
                    ok = false;
                }
            }
        }
        ok.then_some(mask)
    }

    /// A rule's `rate`; `whose` names the rule in messages.
    fn rate(&mut self, node: &Node, whose: &str) -> Option<RateLimit> {
        let view = self.table(node, "`rate`")?;
        self.check_keys(view, "`rate`", RATE_KEYS);
        let pps = match view.get("pps") {
            Some(n) => self.rate_field(
                n,
                "pps",
                1,
                whose,
                " (a rule that should not limit at all is an `allow` rule)",
            ),
            None => {
                self.err(view.at, "`rate` is missing `pps`");
                None
            }
        };
        let burst = match view.get("burst") {
            Some(n) => self.u32_field(n, "burst", 1),
            None => {
                self.err(view.at, "`rate` is missing `burst`");
                None
            }
        };
        let per = match view.get("per") {
            None => Some(RatePer::Source),
            Some(n) => match self.string(n, "per") {
                Some("source") => Some(RatePer::Source),
                Some("rule") => Some(RatePer::Rule),
                // `[geoip]` is checked with the country sets (`geoip.rs`).
                Some("country") => Some(RatePer::Country),
                Some(other) => {
                    self.err(
                        n.at,
                        format!(
                            "unknown `per` value `{other}`; expected `source`, `rule` or \
                             `country`"
                        ),
                    );
                    None
                }
                None => None,
            },
        };
        Some(RateLimit {
            pps: pps?,
            burst: burst?,
            per: per?,
        })
    }

    fn proto(&mut self, node: &Node) -> ProtoField {
        let known = |n: u8| match n {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            1 => Protocol::Icmp,
            58 => Protocol::Icmpv6,
            // Numbers with a name are folded into it above, so the compiler and the
            // port/flag checks see one spelling of each protocol.
            n => Protocol::Other(n),
        };
        match &node.val {
            Val::Str(s) => match s.as_str() {
                "tcp" => ProtoField::Is(Protocol::Tcp),
                "udp" => ProtoField::Is(Protocol::Udp),
                "icmp" => ProtoField::Is(Protocol::Icmp),
                "icmpv6" => ProtoField::Is(Protocol::Icmpv6),
                "any" => ProtoField::Any,
                other => {
                    let msg = format!(
                        "unknown protocol `{other}`; expected `tcp`, `udp`, `icmp`, `icmpv6`, \
                         `any` or a protocol number 0 to 255"
                    );
                    self.err(node.at, msg);
                    ProtoField::Invalid
                }
            },
            Val::Int(_) => self
                .u8_field(node, "proto")
                .map_or(ProtoField::Invalid, |n| ProtoField::Is(known(n))),
            other => {
                let msg = format!(
                    "`proto` must be a protocol name or number, found {}",
                    other.type_name()
                );
                self.err(node.at, msg);
                ProtoField::Invalid
            }
        }
    }

    /// `src` or `dst`. The outer caller keeps `None` (an error) apart from an absent key.
    fn addr_match(&mut self, node: &Node, key: &str, sets: &SetTable) -> Option<AddrMatch> {
        match &node.val {
            Val::Str(s) => match s.strip_prefix('@') {
                Some(set) => self.set_ref(set, node.at, sets),
                None => match parse_cidr(s) {
                    Ok(c) => Some(AddrMatch::Cidrs(vec![c])),
                    Err(e) => {
                        self.err(node.at, e.to_string());
                        None
                    }
                },
            },
            Val::Array(items) if items.is_empty() => {
                let msg = format!(
                    "empty `{key}` list can never match; leave `{key}` out to match any address"
                );
                self.err(node.at, msg);
                None
            }
            Val::Array(items) => {
                if let [only] = items.as_slice()
                    && let Val::Str(s) = &only.val
                    && let Some(set) = s.strip_prefix('@')
                {
                    return self.set_ref(set, only.at, sets);
                }
                let mut cidrs = Vec::with_capacity(items.len());
                let mut ok = true;
                for item in items {
                    let Some(text) = self.string(item, key) else {
                        ok = false;
                        continue;
                    };
                    if text.starts_with('@') {
                        self.err(
                            item.at,
                            format!(
                                "set `{text}` cannot be listed with other entries; \
                                 use `{key} = \"{text}\"` or add the entries to the set"
                            ),
                        );
                        ok = false;
                        continue;
                    }
                    match parse_cidr(text) {
                        Ok(c) => cidrs.push(c),
                        Err(e) => {
                            self.err(item.at, e.to_string());
                            ok = false;
                        }
                    }
                }
                ok.then_some(AddrMatch::Cidrs(cidrs))
            }
            other => {
                let msg = format!(
                    "`{key}` must be an address, a CIDR, a list of them, or \"@set\"; found {}",
                    other.type_name()
                );
                self.err(node.at, msg);
                None
            }
        }
    }

    fn set_ref(&mut self, name: &str, at: usize, sets: &SetTable) -> Option<AddrMatch> {
        let country = crate::geoip::canonical_set_name(name);
        let name = country.as_deref().unwrap_or(name);
        if let Some(&index) = sets.by_name.get(name) {
            return Some(AddrMatch::Set(index));
        }
        self.err(
            at,
            format!("unknown set `@{name}`; define it under [sets.{name}]"),
        );
        None
    }

    fn port_range(&mut self, node: &Node, key: &str) -> Option<PortRange> {
        let out_of_range = |n: &str| format!("port {n} is out of range 0 to 65535");
        let parse_port = |text: &str| -> Result<u16, String> {
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("invalid port `{text}` in `{key}`"));
            }
            text.parse::<u16>().map_err(|_| out_of_range(text))
        };
        let range = match &node.val {
            Val::Int(n) => match u16::try_from(*n) {
                Ok(p) => Ok(PortRange { lo: p, hi: p }),
                Err(_) => Err(out_of_range(&n.to_string())),
            },
            Val::Str(s) => {
                let s = s.trim();
                match s.split_once('-') {
                    None => parse_port(s).map(|p| PortRange { lo: p, hi: p }),
                    Some((lo, hi)) => match (parse_port(lo.trim()), parse_port(hi.trim())) {
                        (Ok(lo), Ok(hi)) if lo <= hi => Ok(PortRange { lo, hi }),
                        (Ok(lo), Ok(hi)) => Err(format!(
                            "port range {lo}-{hi} is reversed; the low port comes first"
                        )),
                        (Err(e), _) | (_, Err(e)) => Err(e),
                    },
                }
            }
            other => Err(format!(
                "`{key}` must be a port number or a \"LO-HI\" range, found {}",
                other.type_name()
            )),
        };
        range.map_err(|msg| self.err(node.at, msg)).ok()
    }

    fn tcp_flags(&mut self, node: &Node) -> Option<TcpFlags> {
        let text = self.string(node, "tcp_flags")?;
        match parse_tcp_flags(text) {
            Ok(flags) => Some(flags),
            Err(msg) => {
                self.err(node.at, msg);
                None
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The `[conntrack]` section

/// A parsed `[conntrack]`, with where it turns tracking off (`enabled = false`), so that
/// `stateful` and `state` can be reported against it.
struct CtCheck {
    conntrack: Conntrack,
    disabled_at: Option<usize>,
}

impl Checker<'_> {
    /// `[conntrack]`. Problems are recorded and replaced by defaults.
    fn conntrack(&mut self, node: &Node, sets: &SetTable) -> CtCheck {
        let mut check = CtCheck {
            conntrack: Conntrack {
                present: true,
                line: self.lines.line(node.at),
                ..Conntrack::default()
            },
            disabled_at: None,
        };
        let Some(view) = self.table(node, "`conntrack`") else {
            return check;
        };
        self.check_keys(view, "[conntrack]", &CONNTRACK_KEYS);
        let ct = &mut check.conntrack;
        if let Some(node) = view.get("enabled")
            && let Some(enabled) = self.boolean(node, "enabled")
        {
            ct.enabled = enabled;
            if !enabled {
                check.disabled_at = Some(node.at);
            }
        }
        let capacity = |this: &mut Self, key: &str, range: &std::ops::RangeInclusive<u32>| {
            let node = view.get(key)?;
            this.integer(
                node,
                key,
                i64::from(*range.start()),
                i64::from(*range.end()),
            )
            .and_then(|n| u32::try_from(n).ok())
        };
        if let Some(n) = capacity(self, "max_entries", &CT_MAX_ENTRIES_RANGE) {
            ct.max_entries = n;
        }
        if let Some(n) = capacity(self, "max_unvalidated", &CT_MAX_UNVALIDATED_RANGE) {
            ct.max_unvalidated = n;
        }
        if let Some(n) = capacity(self, "max_per_source", &CT_PER_SOURCE_RANGE) {
            ct.max_per_source = n;
        }
        if let Some(n) = capacity(self, "new_per_source", &CT_PER_SOURCE_RANGE) {
            ct.new_per_source = n;
        }
        if let Some(node) = view.get("overload_ttl") {
            let (lo, hi) = (
                *CT_OVERLOAD_TTL_RANGE_S.start(),
                *CT_OVERLOAD_TTL_RANGE_S.end(),
            );
            if let Some(n) = self.integer(node, "overload_ttl", lo as i64, hi as i64) {
                ct.overload_ttl_s = n as u64;
            }
        }
        if let Some(node) = view.get("overload_set")
            && let Some(name) = self.string(node, "overload_set")
        {
            let name = name.strip_prefix('@').unwrap_or(name);
            match sets.by_name.get(name) {
                Some(&index) => ct.overload_set = Some(index),
                None => self.err(
                    node.at,
                    format!(
                        "`overload_set` names no set: declare it under [sets.{name}] (it may \
                         have no entries)"
                    ),
                ),
            }
            if let Some(at) = check.disabled_at {
                self.err(
                    node.at,
                    format!(
                        "`overload_set` needs connection tracking, but [conntrack] turns it \
                         off (`enabled = false` on line {})",
                        self.lines.line(at)
                    ),
                );
            } else if ct.max_per_source == 0 && ct.new_per_source == 0 {
                self.err(
                    node.at,
                    "`overload_set` is only filled by a per-source limit: set \
                     `max_per_source` or `new_per_source` too",
                );
            }
        }
        for (class, key) in TIMEOUT_NAMES.iter().enumerate() {
            let Some(node) = view.get(key) else { continue };
            let (lo, hi) = (*CT_TIMEOUT_RANGE_S.start(), *CT_TIMEOUT_RANGE_S.end());
            let seconds = match node.val {
                Val::Int(n) if u64::try_from(n).is_ok_and(|n| (lo..=hi).contains(&n)) => {
                    u64::try_from(n).ok()
                }
                Val::Int(n) => {
                    let msg = format!(
                        "`{key}` must be between {lo} and {hi} seconds (30 days), found {n}"
                    );
                    self.err(node.at, msg);
                    None
                }
                ref other => {
                    let msg = format!(
                        "`{key}` must be a whole number of seconds, found {}",
                        other.type_name()
                    );
                    self.err(node.at, msg);
                    None
                }
            };
            if let Some(seconds) = seconds {
                ct.timeouts_s[class] = seconds;
            }
        }
        check
    }
}

// ---------------------------------------------------------------------------------------
// The `[dns]` section

/// What a scope's `mode` and `lists` resolved to, kept even when the scope has other errors
/// so the `max_entropy_bits` check still sees which lists a blocklist uses.
struct ScopeCheck {
    scope: Option<DnsScope>,
    table: &'static str,
}

/// A parsed `[dns.lists.NAME]`, with where its `max_entropy_bits` values were written.
struct ListCheck {
    list: NameList,
    max_entropy_at: Vec<usize>,
}

impl Checker<'_> {
    fn dns(&mut self, node: &Node) -> Dns {
        let mut dns = Dns {
            ports: DEFAULT_DNS_PORTS.to_vec(),
            ..Dns::default()
        };
        let Some(view) = self.table(node, "`dns`") else {
            return dns;
        };
        self.check_keys(view, "[dns]", DNS_KEYS);
        if let Some(ports) = view.get("ports").and_then(|n| self.dns_ports(n)) {
            dns.ports = ports;
        }
        let budget: &mut AnswerBudget = &mut dns.answers;
        if let Some(n) = view.get("answer_rate") {
            budget.per_second = self
                .rate_field(n, "answer_rate", 0, "[dns]", " (0 for no budget)")
                .unwrap_or(0);
        }
        if let Some(n) = view.get("answer_burst") {
            budget.burst = self.u32_field(n, "answer_burst", 1).unwrap_or(1);
        }
        if let Some(n) = view.get("answer_prefix_v4") {
            budget.prefix_v4 = self
                .integer(n, "answer_prefix_v4", 0, 32)
                .map_or(32, |v| v as u8);
        }
        if let Some(n) = view.get("answer_prefix_v6") {
            budget.prefix_v6 = self
                .integer(n, "answer_prefix_v6", 0, 128)
                .map_or(128, |v| v as u8);
        }
        dns.rate_prefix = self.source_prefix(view);
        dns.capacity_names = self.capacity(view, crate::capacity::Kind::Names);
        dns.bind = view.get("bind").and_then(|n| self.dns_bind(n));
        if let Some(rate) = view
            .get("event_rate")
            .and_then(|n| self.rate_field(n, "event_rate", 0, "[dns]", " (0 never aggregates)"))
        {
            dns.events.rate = rate;
        }
        if let Some(n) = view
            .get("event_sample")
            .and_then(|n| self.u32_field(n, "event_sample", 0))
        {
            dns.events.sample = n;
        }
        let lists = match view.get("lists") {
            Some(node) => self.dns_lists(node),
            None => Vec::new(),
        };
        let by_name: HashMap<&str, usize> = lists
            .iter()
            .enumerate()
            .map(|(i, l)| (l.list.name.as_str(), i))
            .collect();

        let ingress = view.get("ingress").map(|node| ScopeCheck {
            scope: self.dns_scope(node, "[dns.ingress]", INGRESS_KEYS, &by_name),
            table: "[dns.ingress]",
        });
        let mut cgroups = Vec::new();
        let egress = view.get("egress").map(|node| {
            let scope = self.dns_scope(node, "[dns.egress]", EGRESS_KEYS, &by_name);
            cgroups = match TableView::of(node).and_then(|v| v.get("cgroups")) {
                Some(n) => self.cgroups(n),
                None => vec![PathBuf::from(DEFAULT_DNS_CGROUP)],
            };
            ScopeCheck {
                scope,
                table: "[dns.egress]",
            }
        });

        // `max_entropy_bits` limits what an allowlist lets through; in a blocklist it would have
        // to mean "block only when random enough", which nothing implements.
        let mut reported = HashSet::new();
        for check in ingress.iter().chain(egress.iter()) {
            let Some(scope) = &check.scope else { continue };
            if scope.mode != DnsMode::Blocklist {
                continue;
            }
            for &index in &scope.lists {
                let list = &lists[index];
                for &at in &list.max_entropy_at {
                    if reported.insert(at) {
                        let msg = format!(
                            "max_entropy_bits only applies to allowlists, but list `{}` is used by \
                             the blocklist in {}",
                            list.list.name, check.table
                        );
                        self.err(at, msg);
                    }
                }
            }
        }

        dns.ingress = ingress.and_then(|c| c.scope);
        dns.egress = egress
            .and_then(|c| c.scope)
            .map(|scope| DnsEgress { scope, cgroups });
        dns.dga = view.get("dga").map(|n| self.dns_dga(n, &by_name));
        self.dga_list_use(&dns, view, &by_name);
        dns.cache = view
            .get("cache")
            .and_then(|n| self.dns_cache(n, dns.ingress.is_some()));
        dns.lists = lists.into_iter().map(|l| l.list).collect();
        dns
    }

    fn dns_ports(&mut self, node: &Node) -> Option<Vec<u16>> {
        let Val::Array(items) = &node.val else {
            let msg = format!(
                "`ports` must be a list of port numbers, found {}",
                node.val.type_name()
            );
            self.err(node.at, msg);
            return None;
        };
        if items.is_empty() {
            self.err(node.at, "`ports` is empty; leave it out to use port 53");
            return None;
        }
        if items.len() > MAX_DNS_PORTS {
            let msg = format!(
                "too many DNS ports: {} (at most {MAX_DNS_PORTS})",
                items.len()
            );
            self.err(node.at, msg);
        }
        let mut ports = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            match self
                .integer(item, "ports", 1, 65535)
                .and_then(|n| u16::try_from(n).ok())
            {
                Some(port) if ports.contains(&port) => {
                    self.err(item.at, format!("port {port} is listed twice in `ports`"));
                    ok = false;
                }
                Some(port) => ports.push(port),
                None => ok = false,
            }
        }
        ok.then_some(ports)
    }

    /// `[dns.ingress]` or `[dns.egress]`: `None` when `mode` is missing or invalid (with an
    /// error recorded). Other problems are recorded and replaced by defaults, so the caller
    /// still knows the scope's mode and lists.
    fn dns_scope(
        &mut self,
        node: &Node,
        table: &str,
        allowed: &[&str],
        lists: &HashMap<&str, usize>,
    ) -> Option<DnsScope> {
        let view = self.table(node, &format!("`{}`", &table[1..table.len() - 1]))?;
        self.check_keys(view, table, allowed);
        let mode = match view.get("mode") {
            None => {
                self.err(
                    view.at,
                    format!("{table} is missing `mode` (`blocklist` or `allowlist`)"),
                );
                None
            }
            Some(node) => match self.string(node, "mode") {
                Some("blocklist") => Some(DnsMode::Blocklist),
                Some("allowlist") => Some(DnsMode::Allowlist),
                Some(other) => {
                    let msg =
                        format!("unknown DNS mode `{other}`; expected `blocklist` or `allowlist`");
                    self.err(node.at, msg);
                    None
                }
                None => None,
            },
        };
        let default_action = if table == "[dns.egress]" {
            DnsAction::Drop
        } else {
            DnsAction::Nxdomain
        };
        let ingress = table == "[dns.ingress]";
        let action = match view.get("action") {
            None => default_action,
            Some(node) => match self.string(node, "action") {
                Some("nxdomain") => DnsAction::Nxdomain,
                Some("drop") => DnsAction::Drop,
                Some(answer @ ("refused" | "sinkhole")) if !ingress => {
                    let msg = format!(
                        "action `{answer}` answers queries arriving on the guarded interfaces \
                         ([dns.ingress]); on egress a blocked query is dropped and the sender \
                         gets EPERM: use `drop`"
                    );
                    self.err(node.at, msg);
                    default_action
                }
                Some("refused") => DnsAction::Refused,
                Some("sinkhole") => DnsAction::Sinkhole(self.sinkhole(view)),
                Some(other) => {
                    let msg = format!(
                        "unknown DNS action `{other}`; expected `nxdomain`, `sinkhole`, \
                         `refused` or `drop`"
                    );
                    self.err(node.at, msg);
                    default_action
                }
                None => default_action,
            },
        };
        if !matches!(action, DnsAction::Sinkhole(_)) {
            for key in ["sinkhole_ipv4", "sinkhole_ipv6", "sinkhole_ttl"] {
                if let Some(node) = view.get(key) {
                    let msg = format!("`{key}` applies only with action = \"sinkhole\"");
                    self.err(node.at, msg);
                }
            }
        }
        let list_indices = match view.get("lists") {
            None => {
                self.err(
                    view.at,
                    format!(
                        "{table} is missing `lists` (names of [dns.lists.NAME] tables; may be \
                         empty)"
                    ),
                );
                Vec::new()
            }
            Some(node) => self.list_refs(node, lists),
        };
        let flag = |this: &mut Self, key: &str| {
            view.get(key)
                .and_then(|n| this.boolean(n, key))
                .unwrap_or(false)
        };
        let audit = flag(self, "audit");
        let log_allowed = flag(self, "log_allowed");
        let malformed =
            view.get("malformed")
                .and_then(|node| match self.string(node, "malformed") {
                    Some("drop") => Some(true),
                    Some("allow") => Some(false),
                    Some(other) => {
                        let msg = format!(
                            "unknown `malformed` value `{other}`; expected `drop` or `allow`"
                        );
                        self.err(node.at, msg);
                        None
                    }
                    None => None,
                });
        let rate = view
            .get("rate")
            .and_then(|node| self.query_rate(node, table));
        let mode = mode?;
        Some(DnsScope {
            mode,
            action,
            audit,
            lists: list_indices,
            // A resolver may still answer what Palisade cannot read: such a query is dropped
            // in either mode unless the policy says otherwise.
            block_malformed: malformed.unwrap_or(true),
            rate,
            log_allowed,
        })
    }

    /// The sinkhole's answer from `[dns.ingress]`: `sinkhole_ipv4`, `sinkhole_ipv6` and
    /// `sinkhole_ttl`, each defaulted when missing or invalid (with an error recorded).
    fn sinkhole(&mut self, view: TableView<'_>) -> Sinkhole {
        let mut h = Sinkhole::default();
        if let Some(node) = view.get("sinkhole_ipv4")
            && let Some(text) = self.string(node, "sinkhole_ipv4")
        {
            match text.parse::<std::net::Ipv4Addr>() {
                Ok(a) => h.v4 = a,
                Err(_) => {
                    let msg = format!("`sinkhole_ipv4` is not an IPv4 address: `{text}`");
                    self.err(node.at, msg);
                }
            }
        }
        if let Some(node) = view.get("sinkhole_ipv6")
            && let Some(text) = self.string(node, "sinkhole_ipv6")
        {
            match text.parse::<std::net::Ipv6Addr>() {
                Ok(a) => h.v6 = a,
                Err(_) => {
                    let msg = format!("`sinkhole_ipv6` is not an IPv6 address: `{text}`");
                    self.err(node.at, msg);
                }
            }
        }
        if let Some(node) = view.get("sinkhole_ttl")
            && let Some(ttl) = self.integer(node, "sinkhole_ttl", 0, i64::from(i32::MAX))
        {
            h.ttl = ttl as u32;
        }
        h
    }

    fn list_refs(&mut self, node: &Node, lists: &HashMap<&str, usize>) -> Vec<usize> {
        let mut out = Vec::new();
        for (name, at) in self.string_list(node, "lists") {
            match lists.get(name.as_str()) {
                Some(index) if out.contains(index) => {
                    self.err(at, format!("list `{name}` is named twice"));
                }
                Some(&index) => out.push(index),
                None => self.err(
                    at,
                    format!("unknown DNS list `{name}`; define it under [dns.lists.{name}]"),
                ),
            }
        }
        out
    }

    /// The `rate` of the scope `table` (`[dns.ingress]` or `[dns.egress]`).
    fn query_rate(&mut self, node: &Node, table: &str) -> Option<QueryRate> {
        let view = self.table(node, "`rate`")?;
        self.check_keys(view, "`rate`", QUERY_RATE_KEYS);
        let qps = match view.get("qps") {
            Some(n) => self.rate_field(n, "qps", 1, &format!("{table} `rate`"), ""),
            None => {
                self.err(view.at, "`rate` is missing `qps`");
                None
            }
        };
        let burst = match view.get("burst") {
            Some(n) => self.u32_field(n, "burst", 1),
            None => {
                self.err(view.at, "`rate` is missing `burst`");
                None
            }
        };
        Some(QueryRate {
            qps: qps?,
            burst: burst?,
        })
    }

    fn cgroups(&mut self, node: &Node) -> Vec<PathBuf> {
        if matches!(&node.val, Val::Array(items) if items.is_empty()) {
            self.err(
                node.at,
                "`cgroups` is empty; leave it out to attach at the cgroup v2 root",
            );
            return Vec::new();
        }
        let mut out: Vec<PathBuf> = Vec::new();
        for (path, at) in self.string_list(node, "cgroups") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                let msg = format!("cgroup path `{}` must be absolute", path.display());
                self.err(at, msg);
            } else if out.contains(&path) {
                let msg = format!("cgroup `{}` is listed twice", path.display());
                self.err(at, msg);
            } else {
                out.push(path);
            }
        }
        out
    }

    fn dns_lists(&mut self, node: &Node) -> Vec<ListCheck> {
        let mut lists = Vec::new();
        let Some(view) = self.table(node, "`dns.lists`") else {
            return lists;
        };
        for entry in view.entries {
            let name = entry.key.as_str();
            if !valid_name(name, b"") {
                self.err(
                    entry.key_at,
                    format!("invalid DNS list name `{name}`: use 1 to 64 of A-Z a-z 0-9 _ -"),
                );
            }
            // Kept even when broken, so scopes naming it get no second, misleading error.
            lists.push(self.name_list(&entry.node, name));
        }
        lists
    }

    fn name_list(&mut self, node: &Node, name: &str) -> ListCheck {
        let mut check = ListCheck {
            list: NameList {
                name: name.to_owned(),
                entries: Vec::new(),
            },
            max_entropy_at: Vec::new(),
        };
        let what = format!("DNS list `{name}`");
        let Some(view) = self.table(node, &what) else {
            return check;
        };
        self.check_keys(view, &what, LIST_KEYS);
        let subdomains = view
            .get("subdomains")
            .and_then(|n| self.boolean(n, "subdomains"))
            .unwrap_or(false);
        let entries = &mut check.list.entries;
        if let Some(list) = view.get("files") {
            for (file, at) in self.string_list(list, "files") {
                let path = self.base_dir.join(&file);
                match std::fs::read(&path) {
                    Ok(bytes) => {
                        match parse_list_bytes(&bytes, &path.display().to_string(), subdomains) {
                            Ok(mut found) => entries.append(&mut found),
                            Err(mut errors) => self.file_errors.append(&mut errors),
                        }
                    }
                    Err(e) => {
                        self.err(
                            at,
                            format!("cannot read list file `{}`: {e}", path.display()),
                        );
                    }
                }
            }
        }
        if let Some(list) = view.get("names") {
            for (text, at) in self.string_list(list, "names") {
                if let Some(entry) = self.name_entry(&text, at, subdomains) {
                    entries.push(entry);
                }
            }
        }
        if let Some(node) = view.get("entry") {
            let items = match &node.val {
                Val::Array(items) => items.as_slice(),
                Val::Table(_) => {
                    self.err(
                        node.at,
                        format!(
                            "`entry` must be an array of tables: write each entry under \
                             [[dns.lists.{name}.entry]]"
                        ),
                    );
                    &[]
                }
                other => {
                    let msg = format!(
                        "`entry` must be an array of tables, found {}",
                        other.type_name()
                    );
                    self.err(node.at, msg);
                    &[]
                }
            };
            for item in items {
                let Some(view) = self.table(item, "each DNS list entry") else {
                    continue;
                };
                if let Some((entry, entropy_at)) = self.list_entry(view, subdomains) {
                    entries.push(entry);
                    check.max_entropy_at.extend(entropy_at);
                }
            }
        }
        check
    }

    /// One name as written in the policy file, at byte offset `at`.
    fn name_entry(&mut self, text: &str, at: usize, subdomains: bool) -> Option<NameEntry> {
        match parse_name(text) {
            Ok((labels, wildcard)) => Some(NameEntry {
                labels,
                kind: if wildcard {
                    NameMatch::Subdomains
                } else if subdomains {
                    NameMatch::ApexAndSubdomains
                } else {
                    NameMatch::Exact
                },
                qtypes: Vec::new(),
                expires: None,
                max_entropy_bits: None,
                line: self.lines.line(at),
            }),
            Err(e) => {
                self.err(at, e.to_string());
                None
            }
        }
    }

    /// `[[dns.lists.NAME.entry]]`, and where its valid `max_entropy_bits` was written.
    fn list_entry(
        &mut self,
        view: TableView<'_>,
        subdomains: bool,
    ) -> Option<(NameEntry, Option<usize>)> {
        let errors_before = self.error_count();
        for e in view.entries {
            if e.key == "max_entropy" {
                self.err(e.key_at, RETIRED_MAX_ENTROPY);
            }
        }
        self.check_keys_but(view, "DNS list entry", LIST_ENTRY_KEYS, &["max_entropy"]);
        let entry = match view.get("name") {
            None => {
                self.err(view.at, "DNS list entry is missing `name`");
                None
            }
            Some(node) => self
                .string(node, "name")
                .and_then(|text| self.name_entry(text, node.at, subdomains)),
        };
        let qtypes = view
            .get("qtypes")
            .map(|node| self.qtypes(node))
            .unwrap_or_default();
        let max_entropy = view.get("max_entropy_bits").and_then(|node| {
            self.integer(node, "max_entropy_bits", 0, i64::from(MAX_BITS))
                .and_then(|v| u32::try_from(v).ok())
                .map(|v| (v, node.at))
        });
        let expires = view.get("expires").and_then(|node| self.expires(node));
        if self.error_count() != errors_before {
            return None;
        }
        let entry = NameEntry {
            qtypes,
            expires,
            max_entropy_bits: max_entropy.map(|(v, _)| v),
            line: self.lines.line(view.at),
            ..entry?
        };
        Some((entry, max_entropy.map(|(_, at)| at)))
    }

    fn qtypes(&mut self, node: &Node) -> Vec<u16> {
        let Val::Array(items) = &node.val else {
            let msg = format!(
                "`qtypes` must be a list of query type names or numbers, found {}",
                node.val.type_name()
            );
            self.err(node.at, msg);
            return Vec::new();
        };
        if items.is_empty() {
            self.err(
                node.at,
                "`qtypes` is empty; leave it out to match every query type",
            );
        }
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let qtype = match &item.val {
                Val::Str(s) => {
                    let known = QTYPE_NAMES
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(s))
                        .map(|&(_, v)| v);
                    if known.is_none() {
                        let names: Vec<&str> = QTYPE_NAMES.iter().map(|&(n, _)| n).collect();
                        let msg = format!(
                            "unknown query type `{s}`; expected one of {} or a number 1 to 65535",
                            names.join(", ")
                        );
                        self.err(item.at, msg);
                    }
                    known
                }
                Val::Int(_) => self
                    .integer(item, "qtypes", 1, 65535)
                    .and_then(|n| u16::try_from(n).ok()),
                other => {
                    let msg = format!(
                        "`qtypes` entries must be query type names or numbers, found {}",
                        other.type_name()
                    );
                    self.err(item.at, msg);
                    None
                }
            };
            match qtype {
                Some(t) if out.contains(&t) => {
                    self.err(
                        item.at,
                        format!("query type {} is listed twice", qtype_text(t)),
                    );
                }
                Some(t) => out.push(t),
                None => {}
            }
        }
        out
    }

    fn expires(&mut self, node: &Node) -> Option<u64> {
        let result = match &node.val {
            Val::Str(s) | Val::Datetime(s) => parse_utc_time(s),
            Val::Int(n) => u64::try_from(*n)
                .map_err(|_| format!("`expires` must be a unix time of 0 or more, found {n}")),
            other => Err(format!(
                "`expires` must be an RFC 3339 UTC time or a unix time in seconds, found {}",
                other.type_name()
            )),
        };
        result.map_err(|msg| self.err(node.at, msg)).ok()
    }
}

/// `AAAA (28)` for a named type, `1234` otherwise.
fn qtype_text(qtype: u16) -> String {
    match QTYPE_NAMES.iter().find(|&&(_, v)| v == qtype) {
        Some((name, _)) => format!("{name} ({qtype})"),
        None => qtype.to_string(),
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (RFC 3339 in UTC; `t`, `z` and a space for `T`
/// are accepted as RFC 3339 allows) into unix seconds; a fraction is dropped.
fn parse_utc_time(text: &str) -> Result<u64, String> {
    let invalid = || {
        format!(
            "invalid time `{text}`; use RFC 3339 in UTC, like \"2026-12-31T00:00:00Z\", or a \
             unix time in seconds"
        )
    };
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<u64> {
        let digits = b.get(range)?;
        digits
            .iter()
            .all(u8::is_ascii_digit)
            .then(|| digits.iter().fold(0, |v, d| v * 10 + u64::from(d - b'0')))
    };
    let sep = |at: usize, allowed: &[u8]| b.get(at).is_some_and(|c| allowed.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return Err(invalid());
    }
    let (Some(year), Some(month), Some(day), Some(hour), Some(minute), Some(second)) = (
        num(0..4),
        num(5..7),
        num(8..10),
        num(11..13),
        num(14..16),
        num(17..19),
    ) else {
        return Err(invalid());
    };
    let mut zone = 19;
    if b.get(zone) == Some(&b'.') {
        zone += 1;
        let digits = b[zone..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err(invalid());
        }
        zone += digits;
    }
    match &b[zone.min(b.len())..] {
        b"Z" | b"z" => {}
        [b'+' | b'-', ..] => {
            return Err(format!(
                "time `{text}` has a UTC offset; write it in UTC with a final `Z`"
            ));
        }
        [] => {
            return Err(format!(
                "time `{text}` has no time zone; write it in UTC with a final `Z`"
            ));
        }
        _ => return Err(invalid()),
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let days_in_month = usize::try_from(month)
        .ok()
        .and_then(|m| m.checked_sub(1))
        .and_then(|m| month_days.get(m).copied());
    let Some(days_in_month) = days_in_month else {
        return Err(format!("time `{text}`: month {month} does not exist"));
    };
    if day == 0 || day > days_in_month {
        return Err(format!(
            "time `{text}`: day {day} does not exist in month {month}"
        ));
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err(format!(
            "time `{text}`: {hour:02}:{minute:02}:{second:02} is not a time of day"
        ));
    }
    if year < 1970 {
        return Err(format!("time `{text}` is before 1970"));
    }
    Ok(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days from 1970-01-01 to a date in the proleptic Gregorian calendar, for years from 1970.
const fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    // Years start in March so the leap day comes last.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The name of the IPv6 extension header protocol number `n` names, if any: the packet
/// parser walks past these headers to the protocol after them, so no IPv6 packet ever has
/// them as its protocol.
const fn ipv6_extension_header(n: u8) -> Option<&'static str> {
    match n {
        IPPROTO_HOPOPTS => Some("Hop-by-Hop Options"),
        IPPROTO_ROUTING => Some("Routing"),
        IPPROTO_FRAGMENT => Some("Fragment"),
        IPPROTO_AH => Some("Authentication Header"),
        IPPROTO_DSTOPTS => Some("Destination Options"),
        _ => None,
    }
}

/// What families `m` can match, or `None` when it is not restricted or not yet known (an
/// empty set, e.g. one whose file failed to load, restricts nothing worth reporting).
fn families(m: &AddrMatch, sets: &SetTable) -> Option<Families> {
    match m {
        AddrMatch::Any => None,
        AddrMatch::Cidrs(cidrs) => Some(Families::of(cidrs)),
        AddrMatch::Set(i) => {
            let set = sets.sets.get(*i)?;
            (!set.entries.is_empty()).then(|| Families::of(&set.entries))
        }
    }
}

/// `"VALUE/MASK"` or `"VALUE"` (mask = value); flag names are case-insensitive.
/// The DSCP code point a name stands for: `csN` (`8 * N`), `afXY` (`8 * X + 2 * Y`, X in
/// 1..=4, Y in 1..=3), `ef` (46) and `va` (44).
fn dscp_by_name(name: &str) -> Option<u8> {
    let digit = |c: u8, lo: u8, hi: u8| (lo..=hi).contains(&c.wrapping_sub(b'0')).then(|| c - b'0');
    match name.as_bytes() {
        b"ef" => Some(46),
        b"va" => Some(44),
        [b'c', b's', n] => digit(*n, 0, 7).map(|n| 8 * n),
        [b'a', b'f', x, y] => Some(8 * digit(*x, 1, 4)? + 2 * digit(*y, 1, 3)?),
        _ => None,
    }
}

fn parse_tcp_flags(text: &str) -> Result<TcpFlags, String> {
    let names = |part: &str| -> Result<u8, String> {
        let mut bits = 0u8;
        if part.trim().is_empty() {
            return Ok(0);
        }
        for name in part.split(',') {
            let name = name.trim();
            let bit = TCP_FLAG_NAMES
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|&(_, bit)| bit)
                .ok_or_else(|| {
                    let known: Vec<&str> = TCP_FLAG_NAMES.iter().map(|&(n, _)| n).collect();
                    format!(
                        "unknown TCP flag `{name}` in `{text}`; expected {}",
                        known.join(", ")
                    )
                })?;
            bits |= bit;
        }
        Ok(bits)
    };
    let (value, mask) = match text.split_once('/') {
        Some((value, mask)) => {
            let (value, mask) = (names(value)?, names(mask)?);
            if mask == 0 {
                return Err(format!(
                    "`tcp_flags` `{text}` has an empty mask after `/`, so it tests no flag"
                ));
            }
            (value, mask)
        }
        None => {
            let value = names(text)?;
            if value == 0 {
                return Err("`tcp_flags` is empty; name flags like \"syn/syn,ack\"".to_owned());
            }
            (value, value)
        }
    };
    if value & !mask != 0 {
        return Err(format!(
            "`tcp_flags` `{text}`: every flag before `/` must also be in the mask after it"
        ));
    }
    Ok(TcpFlags { value, mask })
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_common::conntrack::{
        DEFAULT_TIMEOUTS_S, STATE_ALL, STATE_ESTABLISHED, STATE_INVALID, STATE_NEW, STATE_RELATED,
        T_ICMP, T_OTHER, T_TCP_CLOSE, T_TCP_CLOSING, T_TCP_ESTABLISHED, T_TCP_SYN, T_TCP_TIME_WAIT,
        T_UDP, T_UDP_REPLIED,
    };
    use std::net::IpAddr;

    fn cidr(text: &str, len: u8) -> Cidr {
        Cidr::new(text.parse::<IpAddr>().expect("test address"), len).expect("test prefix")
    }

    fn parse(text: &str) -> Result<Policy, ConfigError> {
        parse_policy(text, "p.toml", Path::new("/nonexistent"))
    }

    /// The diagnostics for `text`, as printed.
    fn errors(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(policy) => panic!("expected errors, parsed {policy:#?}"),
            Err(e) => e.errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn nat_section_parses_to_the_model() {
        let p = parse(
            r#"
[nat]
out = "wan0"
masquerade = ["10.1.0.0/16", "fd01::/64"]
address_v4 = "198.51.100.1"
ports = [20000, 29999]

[[nat.forward]]
proto = "tcp"
port = 8080
to = "10.1.0.5:80"

[[nat.forward]]
proto = "udp"
port = 53
to = "[fd01::5]:5353"
"#,
        )
        .expect("parses");
        let n = &p.nat;
        assert_eq!(n.out.as_deref(), Some("wan0"));
        assert_eq!(n.masquerade.len(), 2);
        assert_eq!(n.address_v4, Some("198.51.100.1".parse().expect("ip")));
        assert_eq!(n.address_v6, None);
        assert_eq!(n.ports, (20_000, 29_999));
        assert_eq!(n.forwards.len(), 2);
        assert_eq!(n.forwards[1].to, "[fd01::5]:5353".parse().expect("addr"));
        assert_eq!((n.forwards[0].line, n.line), (8, 2));
        // NAT turns tracking on.
        assert!(p.tracks_connections());
        assert!(!parse("").expect("empty").nat.any());
    }

    #[test]
    fn each_nat_error_is_located() {
        for (text, want) in [
            (
                "[nat]\nmasquerade = [\"10.0.0.0/8\"]\n",
                "p.toml:1:1: [nat] needs `out`",
            ),
            (
                "[nat]\nout = \"wan0\"\nmasquerade = [\"10.0.0.300/8\"]\n",
                "p.toml:3:15: [nat].masquerade:",
            ),
            (
                "[nat]\nout = \"wan0\"\nmasquerade = [\"10.0.0.0/8\"]\naddress_v4 = \"fd00::1\"\n",
                "p.toml:4:14: [nat].address_v4 must be a unicast IPv4 address",
            ),
            (
                "[nat]\nout = \"wan0\"\nmasquerade = [\"10.0.0.0/8\"]\nports = [3000, 2000]\n",
                "p.toml:4:9: [nat].ports: the low end 3000 is above the high end 2000",
            ),
            (
                "[nat]\nout = \"wan0\"\nmasquerade = [\"10.0.0.0/8\"]\nports = [0, 2000]\n",
                "p.toml:4:10: `ports` must be between 1 and 65535, found 0",
            ),
            (
                "[nat]\nout = \"wan0\"\n",
                "p.toml:1:1: [nat] translates nothing",
            ),
            (
                "[nat]\nout = \"wan0\"\n[[nat.forward]]\nproto = \"sctp\"\nport = 1\nto = \"10.0.0.1:1\"\n",
                "p.toml:4:9: [[nat.forward]].proto must be \"tcp\" or \"udp\"",
            ),
            (
                "[nat]\nout = \"wan0\"\n[[nat.forward]]\nproto = \"tcp\"\nport = 1\nto = \"10.0.0.1\"\n",
                "p.toml:6:6: [[nat.forward]].to must be an inside address and port",
            ),
            (
                "[nat]\nout = \"wan0\"\n[[nat.forward]]\nproto = \"tcp\"\nport = 1\nto = \"10.0.0.1:1\"\n[[nat.forward]]\nproto = \"tcp\"\nport = 1\nto = \"10.0.0.2:1\"\n",
                "p.toml:7:1: [[nat.forward]]: tcp port 1 is forwarded already (line 3)",
            ),
            (
                "[conntrack]\nenabled = false\n[nat]\nout = \"wan0\"\nmasquerade = [\"10.0.0.0/8\"]\n",
                "p.toml:2:11: [nat] needs connection tracking",
            ),
            (
                "[nat]\nout = \"wan0\"\nmasquerade = [\"10.0.0.0/8\"]\nport = 1\n",
                "p.toml:4:1: unknown key `port` in [nat]",
            ),
        ] {
            let errs = errors(text);
            assert!(
                errs.iter().any(|e| e.starts_with(want)),
                "{text:?}: wanted {want:?}, got {errs:?}"
            );
        }
        let many = (0..17)
            .map(|i| format!("\"10.{i}.0.0/16\""))
            .collect::<Vec<_>>()
            .join(", ");
        let errs = errors(&format!("[nat]\nout = \"wan0\"\nmasquerade = [{many}]\n"));
        assert!(
            errs.iter().any(
                |e| e.starts_with("p.toml:3:14: [nat].masquerade lists 17 subnets; at most 16")
            ),
            "{errs:?}"
        );
    }

    /// A rule with nothing but an action, as a starting point for expected values.
    fn bare_rule(action: Action, priority: u32, line: usize) -> Rule {
        Rule {
            name: None,
            priority,
            action,
            log: false,
            src: AddrMatch::Any,
            dst: AddrMatch::Any,
            protocol: None,
            src_ports: None,
            dst_ports: None,
            tcp_flags: None,
            icmp: None,
            state: None,
            ip: IpHeaderMatch::default(),
            link: LinkMatch::default(),
            not: Negation::default(),
            line,
        }
    }

    const EXAMPLE: &str = r#"
[firewall]
default = "drop"
log_default = true
fragments = "drop"

[sets.blocklist]
entries = ["203.0.113.0/24", "2001:db8:bad::/48", "198.51.100.7"]

[sets.empty]

[[firewall.rule]]
name = "web"
action = "allow"
proto = "tcp"
dport = "80-443"

[[firewall.rule]]
name = "ssh-from-office"
priority = 10
action = "allow"
proto = "tcp"
src = "10.0.0.0/8"
dst = ["192.0.2.1", "2001:db8::/32"]
sport = "1024-65535"
dport = 22
tcp_flags = "syn/syn,ack"

[[firewall.rule]]
name = "drop-blocklist"
priority = 10
action = "drop"
src = "@blocklist"
log = true

[[firewall.rule]]
name = "ping.limit"
priority = 5
action = "rate-limit"
proto = "icmp"
icmp_type = 8
icmp_code = 0
rate = { pps = 100, burst = 200 }

[[firewall.rule]]
action = "rate-limit"
proto = 47
rate = { pps = 1, burst = 1, per = "rule" }
"#;

    #[test]
    fn full_example_parses_to_the_expected_model() {
        let policy = parse(EXAMPLE).expect("valid example");
        assert_eq!(
            policy.sets,
            vec![
                IpSet {
                    name: "blocklist".into(),
                    entries: vec![
                        cidr("203.0.113.0", 24),
                        cidr("2001:db8:bad::", 48),
                        cidr("198.51.100.7", 32),
                    ],
                },
                IpSet {
                    name: "empty".into(),
                    entries: vec![]
                },
            ]
        );
        let ping = Rule {
            name: Some("ping.limit".into()),
            protocol: Some(Protocol::Icmp),
            icmp: Some(IcmpMatch {
                icmp_type: 8,
                code: Some(0),
            }),
            ..bare_rule(
                Action::RateLimit(RateLimit {
                    pps: 100,
                    burst: 200,
                    per: RatePer::Source,
                }),
                5,
                36,
            )
        };
        let ssh = Rule {
            name: Some("ssh-from-office".into()),
            protocol: Some(Protocol::Tcp),
            src: AddrMatch::Cidrs(vec![cidr("10.0.0.0", 8)]),
            dst: AddrMatch::Cidrs(vec![cidr("192.0.2.1", 32), cidr("2001:db8::", 32)]),
            src_ports: Some(PortRange {
                lo: 1024,
                hi: 65535,
            }),
            dst_ports: Some(PortRange { lo: 22, hi: 22 }),
            tcp_flags: Some(TcpFlags {
                value: 0x02,
                mask: 0x12,
            }),
            ..bare_rule(Action::Allow, 10, 18)
        };
        let blocklist = Rule {
            name: Some("drop-blocklist".into()),
            log: true,
            src: AddrMatch::Set(0),
            ..bare_rule(Action::Drop, 10, 29)
        };
        let web = Rule {
            name: Some("web".into()),
            protocol: Some(Protocol::Tcp),
            dst_ports: Some(PortRange { lo: 80, hi: 443 }),
            ..bare_rule(Action::Allow, 1_000_000, 12)
        };
        let gre = Rule {
            protocol: Some(Protocol::Other(47)),
            ..bare_rule(
                Action::RateLimit(RateLimit {
                    pps: 1,
                    burst: 1,
                    per: RatePer::Rule,
                }),
                1_000_004,
                45,
            )
        };
        assert_eq!(
            policy.firewall,
            Firewall {
                rate_prefix: Default::default(),
                capacity: Default::default(),
                default_action: Action::Drop,
                log_default: true,
                fragments: FragmentPolicy::Drop,
                stateful: false,
                // By priority; the two priority-10 rules keep file order.
                rules: vec![ping, ssh, blocklist, web, gre],
            }
        );
    }

    #[test]
    fn ipv4_is_stored_mapped_with_family_bits() {
        let policy = parse("[sets.s]\nentries = [\"192.0.2.0/24\", \"::ffff:192.0.2.0/120\"]\n")
            .expect("valid");
        let [v4, v6] = policy.sets[0].entries[..] else {
            panic!("two entries")
        };
        assert_eq!(v4.family, Family::V4);
        assert_eq!(
            v4.addr,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 0]
        );
        assert_eq!(v4.prefix_len, 24);
        // The same bytes written as IPv6 stay an IPv6 block: families never merge.
        assert_eq!(v6.family, Family::V6);
        assert_eq!(v6.addr, v4.addr);
        assert_eq!(v6.prefix_len, 120);
    }

    #[test]
    fn empty_file_is_the_permissive_default() {
        let policy = parse("# nothing here\n").expect("valid");
        assert_eq!(
            policy,
            Policy {
                shield: crate::shield::Shield::default(),
                scrub: crate::scrub::Scrub::default(),
                nat: crate::nat::Nat::default(),
                lb: crate::lb::Lb::default(),
                tls: crate::tls::Tls::default(),
                dhcp: crate::dhcp::Dhcp::default(),
                intel: crate::intel::Intel::default(),
                dlp: crate::dlp::Dlp::default(),
                geoip: None,
                ids: crate::ids::Ids::default(),
                firewall: Firewall {
                    rate_prefix: Default::default(),
                    capacity: Default::default(),
                    default_action: Action::Allow,
                    log_default: false,
                    fragments: FragmentPolicy::MatchL3,
                    stateful: false,
                    rules: vec![],
                },
                sets: vec![],
                dns: Dns {
                    ports: vec![53],
                    ..Dns::default()
                },
                conntrack: Conntrack {
                    enabled: true,
                    present: false,
                    timeouts_s: palisade_common::conntrack::DEFAULT_TIMEOUTS_S,
                    max_entries: 262_144,
                    max_unvalidated: 16_384,
                    max_per_source: 0,
                    new_per_source: 0,
                    overload_set: None,
                    overload_ttl_s: 600,
                    line: 0,
                },
            }
        );
        assert!(!parse("").expect("valid").tracks_connections());
    }

    #[test]
    fn unprioritised_rules_follow_prioritised_ones_in_file_order() {
        let text = "[[firewall.rule]]\naction = \"allow\"\nname = \"a\"\n\
                    [[firewall.rule]]\naction = \"drop\"\nname = \"b\"\npriority = 4000000000\n\
                    [[firewall.rule]]\naction = \"allow\"\nname = \"c\"\n\
                    [[firewall.rule]]\naction = \"allow\"\nname = \"d\"\npriority = 0\n";
        let policy = parse(text).expect("valid");
        let order: Vec<(&str, u32, usize)> = policy
            .firewall
            .rules
            .iter()
            .map(|r| (r.name.as_deref().unwrap_or(""), r.priority, r.line))
            .collect();
        assert_eq!(
            order,
            [
                ("d", 0, 11),
                ("a", 1_000_000, 1),
                ("c", 1_000_002, 8),
                ("b", 4_000_000_000, 4)
            ]
        );
    }

    #[test]
    fn dotted_keys_and_inline_rule_arrays_are_accepted() {
        let text = "firewall.default = \"drop\"\n\
                    firewall.rule = [{ action = \"allow\", proto = \"udp\", dport = \"53\" }]\n";
        let policy = parse(text).expect("valid");
        assert_eq!(policy.firewall.default_action, Action::Drop);
        assert_eq!(
            policy.firewall.rules,
            vec![Rule {
                protocol: Some(Protocol::Udp),
                dst_ports: Some(PortRange { lo: 53, hi: 53 }),
                ..bare_rule(Action::Allow, 1_000_000, 2)
            }]
        );
    }

    #[test]
    fn protocol_numbers_with_names_are_normalised() {
        let text = "[[firewall.rule]]\naction = \"allow\"\nproto = 6\ndport = 22\n\
                    [[firewall.rule]]\naction = \"allow\"\nproto = 58\nicmp_type = 128\n\
                    [[firewall.rule]]\naction = \"allow\"\nproto = \"any\"\n";
        let rules = parse(text).expect("valid").firewall.rules;
        let protos: Vec<Option<Protocol>> = rules.iter().map(|r| r.protocol).collect();
        assert_eq!(protos, [Some(Protocol::Tcp), Some(Protocol::Icmpv6), None]);
    }

    #[test]
    fn tcp_flag_forms() {
        let flags = |text: &str| parse_tcp_flags(text);
        assert_eq!(
            flags("syn/syn,ack"),
            Ok(TcpFlags {
                value: 0x02,
                mask: 0x12
            })
        );
        assert_eq!(
            flags("syn,ack"),
            Ok(TcpFlags {
                value: 0x12,
                mask: 0x12
            })
        );
        assert_eq!(
            flags("/syn"),
            Ok(TcpFlags {
                value: 0,
                mask: 0x02
            })
        );
        assert_eq!(
            flags("FIN, Rst / fin,rst,psh,urg,ece,cwr"),
            Ok(TcpFlags {
                value: 0x05,
                mask: 0xed
            })
        );
        assert_eq!(
            flags("syn,ack/syn"),
            Err("`tcp_flags` `syn,ack/syn`: every flag before `/` must also be in the mask after it"
                .to_owned())
        );
        assert_eq!(
            flags("syn/"),
            Err("`tcp_flags` `syn/` has an empty mask after `/`, so it tests no flag".to_owned())
        );
        assert_eq!(
            flags(""),
            Err("`tcp_flags` is empty; name flags like \"syn/syn,ack\"".to_owned())
        );
        assert_eq!(
            flags("syn,,ack"),
            Err("unknown TCP flag `` in `syn,,ack`; expected fin, syn, rst, psh, ack, urg, ece, cwr"
                .to_owned())
        );
        assert_eq!(
            flags("sin/syn"),
            Err("unknown TCP flag `sin` in `sin/syn`; expected fin, syn, rst, psh, ack, urg, ece, cwr"
                .to_owned())
        );
    }

    /// One case per validation rule: the text and exactly the diagnostics it must produce.
    #[test]
    fn each_validation_error_is_located() {
        let rule = |body: &str| format!("[[firewall.rule]]\naction = \"allow\"\n{body}\n");
        let cases: Vec<(String, Vec<&str>)> = vec![
            (
                rule("src = \"10.0.0.300\""),
                vec!["p.toml:3:7: invalid address or CIDR `10.0.0.300`"],
            ),
            (
                rule("src = \"10.0.0.0/8 \""),
                vec!["p.toml:3:7: invalid address or CIDR `10.0.0.0/8 `"],
            ),
            (
                rule("dst = [\"10.0.0.0/8\", \"2001:db8::/129\"]"),
                vec![
                    "p.toml:3:22: prefix length 129 is too long for an IPv6 address (at most 128) \
                     in `2001:db8::/129`",
                ],
            ),
            (
                rule("src = \"10.0.0.1/8\""),
                vec!["p.toml:3:7: host bits set; did you mean 10.0.0.0/8?"],
            ),
            (
                rule("src = \"10.0.0.0/8\"\ndst = [\"2001:db8::/32\", \"2001:db8:1::/48\"]"),
                vec![
                    "p.toml:4:7: `src` matches only IPv4 addresses and `dst` only IPv6 ones, so \
                     this rule can never match",
                ],
            ),
            (
                rule("src = \"@nope\""),
                vec!["p.toml:3:7: unknown set `@nope`; define it under [sets.nope]"],
            ),
            (
                rule("src = [\"@nope\", \"10.0.0.0/8\"]"),
                vec![
                    "p.toml:3:8: set `@nope` cannot be listed with other entries; use `src = \
                     \"@nope\"` or add the entries to the set",
                ],
            ),
            (
                rule("dport = 22"),
                vec!["p.toml:3:9: `dport` needs proto = \"tcp\" or \"udp\""],
            ),
            (
                rule("proto = \"icmp\"\nsport = \"1000-2000\""),
                vec!["p.toml:4:9: `sport` needs proto = \"tcp\" or \"udp\""],
            ),
            (
                rule("proto = \"udp\"\ntcp_flags = \"syn\""),
                vec!["p.toml:4:13: `tcp_flags` needs proto = \"tcp\""],
            ),
            (
                rule("proto = \"tcp\"\nicmp_type = 8"),
                vec!["p.toml:4:13: `icmp_type` needs proto = \"icmp\" or \"icmpv6\""],
            ),
            (
                rule("proto = \"icmp\"\nicmp_code = 0"),
                vec!["p.toml:4:13: `icmp_code` needs `icmp_type`"],
            ),
            (
                rule("proto = \"tcp\"\ndport = \"2000-1000\""),
                vec!["p.toml:4:9: port range 2000-1000 is reversed; the low port comes first"],
            ),
            (
                rule("proto = \"tcp\"\ndport = 70000\nsport = \"1-65536\""),
                vec![
                    "p.toml:4:9: port 70000 is out of range 0 to 65535",
                    "p.toml:5:9: port 65536 is out of range 0 to 65535",
                ],
            ),
            (
                rule("proto = \"tcp\"\ndport = \"http\""),
                vec!["p.toml:4:9: invalid port `http` in `dport`"],
            ),
            (
                "[[firewall.rule]]\naction = \"rate-limit\"\n".to_owned(),
                vec![
                    "p.toml:2:10: action `rate-limit` needs a `rate`, e.g. rate = { pps = 100, \
                     burst = 200 }",
                ],
            ),
            (
                rule("rate = { pps = 10, burst = 10 }"),
                vec!["p.toml:3:8: `rate` is only allowed with action = \"rate-limit\""],
            ),
            (
                "[[firewall.rule]]\naction = \"rate-limit\"\nrate = { pps = 0, per = \"host\" }\n"
                    .to_owned(),
                vec![
                    "p.toml:3:8: `rate` is missing `burst`",
                    "p.toml:3:16: `pps` must be between 1 and 10000000, found 0",
                    "p.toml:3:25: unknown `per` value `host`; expected `source`, `rule` or \
                     `country`",
                ],
            ),
            (
                "[firewall]\ndefault = \"rate-limit\"\n".to_owned(),
                vec![
                    "p.toml:2:11: the default action cannot be `rate-limit`; use `allow` or `drop`",
                ],
            ),
            (
                "[firewall]\ndefault = \"reject\"\nfragments = \"keep\"\nlog_default = 1\n"
                    .to_owned(),
                vec![
                    "p.toml:2:11: unknown default action `reject`; expected `allow` or `drop`",
                    "p.toml:3:13: unknown fragment policy `keep`; expected `drop` or `match-l3`",
                    "p.toml:4:15: `log_default` must be true or false, found an integer",
                ],
            ),
            (
                format!("{}{}", rule("name = \"a\""), rule("name = \"a\"")),
                vec!["p.toml:6:8: duplicate rule name `a` (first used on line 3)"],
            ),
            (
                rule("name = \"has space\""),
                vec!["p.toml:3:8: invalid rule name `has space`: use 1 to 64 of A-Z a-z 0-9 _ . -"],
            ),
            (
                rule("src = []"),
                vec![
                    "p.toml:3:7: empty `src` list can never match; leave `src` out to match any address",
                ],
            ),
            (
                rule("prot = \"tcp\""),
                vec![
                    "p.toml:3:1: unknown key `prot` in firewall rule; expected one of `name`, \
                     `priority`, `action`, `proto`, `src`, `dst`, `sport`, `dport`, `tcp_flags`, \
                     `icmp_type`, `icmp_code`, `state`, `rate`, `log`, `dscp`, `ecn`, `ttl`, \
                     `length`, `set_mark`, `set_dscp`, `mirror_to`, `src_mac`, `dst_mac`, `vlan`, \
                     `iface`, `not`, `redirect_to`, `route_table`, `cpus`, `queue_size`",
                ],
            ),
            (
                "[[firewall.rule]]\nname = \"x\"\n".to_owned(),
                vec![
                    "p.toml:1:1: firewall rule is missing `action` (one of `allow`, `drop`, \
                     `rate-limit`, `mark`, `mirror`)",
                ],
            ),
            (
                rule("proto = \"sctp\""),
                vec![
                    "p.toml:3:9: unknown protocol `sctp`; expected `tcp`, `udp`, `icmp`, `icmpv6`, \
                     `any` or a protocol number 0 to 255",
                ],
            ),
            (
                rule("proto = 256"),
                vec!["p.toml:3:9: `proto` must be between 0 and 255, found 256"],
            ),
            (
                rule("priority = -1"),
                vec!["p.toml:3:12: `priority` must be between 0 and 4294967295, found -1"],
            ),
            (
                "[[firewall.rule]]\naction = \"allow\"\nproto = \"icmp\"\nicmp_type = 300\n"
                    .to_owned(),
                vec!["p.toml:4:13: `icmp_type` must be between 0 and 255, found 300"],
            ),
            (
                "[firewall.rule]\naction = \"allow\"\n".to_owned(),
                vec![
                    "p.toml:1:1: `rule` must be an array of tables: write each rule under \
                     [[firewall.rule]]",
                ],
            ),
            (
                "[sets.\"bad name\"]\nentries = [\"10.0.0.0/8\", \"10.0.0.1/8\"]\nfile = []\n"
                    .to_owned(),
                vec![
                    "p.toml:1:7: invalid set name `bad name`: use 1 to 64 of A-Z a-z 0-9 _ -",
                    "p.toml:2:26: host bits set; did you mean 10.0.0.0/8?",
                    "p.toml:3:1: unknown key `file` in set `bad name`; expected one of `entries`, \
                     `files`",
                ],
            ),
            (
                "[sets.s]\nfiles = [\"missing.txt\"]\n".to_owned(),
                vec![
                    "p.toml:2:10: cannot read set file `/nonexistent/missing.txt`: No such file \
                     or directory (os error 2)",
                ],
            ),
            (
                "firewal = {}\n[fire]\n".to_owned(),
                vec![
                    "p.toml:1:1: unknown key `firewal` in the top level; expected one of \
                     `firewall`, `sets`, `dns`, `conntrack`, `shield`, `scrub`, `nat`, `lb`, `tls`, \
                     `dhcp`, `intel`, `dlp`, `geoip`, `ids`",
                    "p.toml:2:2: unknown key `fire` in the top level; expected one of `firewall`, \
                     `sets`, `dns`, `conntrack`, `shield`, `scrub`, `nat`, `lb`, `tls`, `dhcp`, `intel`, \
                     `dlp`, `geoip`, `ids`",
                ],
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(errors(&text), expected, "for:\n{text}");
        }
    }

    #[test]
    fn mac_addresses_parse_exactly_with_located_errors() {
        let link = |body: &str| {
            let text = format!("[[firewall.rule]]\naction = \"drop\"\n{body}\n");
            parse(&text).map(|p| p.firewall.rules[0].link)
        };
        let mac = [0x02, 0x00, 0x5e, 0x10, 0xab, 0xff];
        assert_eq!(
            link("src_mac = \"02:00:5e:10:ab:ff\""),
            Ok(LinkMatch {
                src_mac: Some(mac),
                ..LinkMatch::default()
            })
        );
        assert_eq!(
            link("dst_mac = \"02-00-5E-10-AB-FF\""),
            Ok(LinkMatch {
                dst_mac: Some(mac),
                ..LinkMatch::default()
            })
        );
        assert_eq!(link(""), Ok(LinkMatch::default()));
        let bad = |body: &str| errors(&format!("[[firewall.rule]]\naction = \"drop\"\n{body}\n"));
        for text in [
            "02:00:5e:10:ab",
            "02:00:5e:10:ab:ff:00",
            "02:00:5e:10:ab:fg",
            "2:0:5e:10:ab:ff",
            "02:00-5e:10:ab:ff",
            "",
        ] {
            assert_eq!(
                bad(&format!("src_mac = \"{text}\"")),
                vec![format!(
                    "p.toml:3:11: invalid MAC address `{text}` in `src_mac`; expected six hex \
                     pairs such as \"02:00:5e:10:00:01\""
                )],
                "{text}"
            );
        }
        assert_eq!(
            bad("dst_mac = 7"),
            vec!["p.toml:3:11: `dst_mac` must be a MAC address string, found an integer"]
        );
    }

    #[test]
    fn vlan_parses_as_an_id_or_untagged_with_located_errors() {
        let vlan = |body: &str| {
            let text = format!("[[firewall.rule]]\naction = \"drop\"\n{body}\n");
            parse(&text).map(|p| p.firewall.rules[0].link.vlan)
        };
        assert_eq!(vlan("vlan = 0"), Ok(Some(0)));
        assert_eq!(vlan("vlan = 4095"), Ok(Some(4095)));
        assert_eq!(vlan("vlan = \"untagged\""), Ok(Some(VLAN_UNTAGGED)));
        assert_eq!(vlan(""), Ok(None));
        let bad = |body: &str| errors(&format!("[[firewall.rule]]\naction = \"drop\"\n{body}\n"));
        assert_eq!(
            bad("vlan = 4096"),
            vec!["p.toml:3:8: `vlan` must be between 0 and 4095, found 4096"]
        );
        assert_eq!(
            bad("vlan = -1"),
            vec!["p.toml:3:8: `vlan` must be between 0 and 4095, found -1"]
        );
        assert_eq!(
            bad("vlan = \"100\""),
            vec![
                "p.toml:3:8: invalid VLAN `100` in `vlan`; expected an id 0 to 4095 or \
                 \"untagged\""
            ]
        );
        assert_eq!(
            bad("vlan = [1]"),
            vec!["p.toml:3:8: `vlan` must be an id 0 to 4095 or \"untagged\", found an array"]
        );
    }

    #[test]
    fn length_parses_as_a_value_or_a_range_with_located_errors() {
        let length = |body: &str| {
            let text = format!("[[firewall.rule]]\naction = \"drop\"\n{body}\n");
            parse(&text).map(|p| p.firewall.rules[0].ip.length)
        };
        assert_eq!(length("length = 1500"), Ok(Some((1500, 1500))));
        assert_eq!(length("length = \"0-99\""), Ok(Some((0, 99))));
        assert_eq!(length("length = \" 576 - 65535 \""), Ok(Some((576, 65535))));
        assert_eq!(length("length = \"40\""), Ok(Some((40, 40))));
        assert_eq!(length(""), Ok(None));
        let bad = |body: &str| errors(&format!("[[firewall.rule]]\naction = \"drop\"\n{body}\n"));
        assert_eq!(
            bad("length = 65536"),
            vec!["p.toml:3:10: length 65536 is out of range 0 to 65535"]
        );
        assert_eq!(
            bad("length = -1"),
            vec!["p.toml:3:10: length -1 is out of range 0 to 65535"]
        );
        assert_eq!(
            bad("length = \"100-70000\""),
            vec!["p.toml:3:10: length 70000 is out of range 0 to 65535"]
        );
        assert_eq!(
            bad("length = \"1500-64\""),
            vec!["p.toml:3:10: length range 1500-64 is reversed; the low value comes first"]
        );
        assert_eq!(
            bad("length = \"big\""),
            vec!["p.toml:3:10: invalid length `big` in `length`"]
        );
        assert_eq!(
            bad("length = [1, 2]"),
            vec!["p.toml:3:10: `length` must be a number or a \"LO-HI\" range, found an array"]
        );
    }

    #[test]
    fn dscp_ecn_and_ttl_parse_by_number_name_and_range() {
        let rule = |body: &str| {
            let text = format!("[[firewall.rule]]\naction = \"drop\"\n{body}\n");
            parse(&text).map(|p| p.firewall.rules[0].ip)
        };
        let ip = |dscp, ecn, ttl| {
            Ok(IpHeaderMatch {
                dscp,
                ecn,
                ttl,
                length: None,
            })
        };
        assert_eq!(rule("dscp = 46"), ip(Some(46), None, None));
        assert_eq!(rule("dscp = \"ef\""), ip(Some(46), None, None));
        assert_eq!(rule("dscp = \"cs6\""), ip(Some(48), None, None));
        assert_eq!(rule("dscp = \"af41\""), ip(Some(34), None, None));
        assert_eq!(rule("dscp = \"va\""), ip(Some(44), None, None));
        assert_eq!(rule("ecn = \"ce\""), ip(None, Some(3), None));
        assert_eq!(rule("ecn = 1"), ip(None, Some(1), None));
        assert_eq!(rule("ttl = 1"), ip(None, None, Some((1, 1))));
        assert_eq!(rule("ttl = \"0-9\""), ip(None, None, Some((0, 9))));
        assert_eq!(rule("ttl = \" 64 \""), ip(None, None, Some((64, 64))));
        assert_eq!(rule(""), ip(None, None, None));
        let bad = |body: &str| errors(&format!("[[firewall.rule]]\naction = \"drop\"\n{body}\n"));
        assert_eq!(
            bad("dscp = 64"),
            vec!["p.toml:3:8: `dscp` must be between 0 and 63, found 64"]
        );
        assert_eq!(
            bad("dscp = \"af44\""),
            vec![
                "p.toml:3:8: unknown DSCP name `af44`; expected a number 0 to 63, `cs0`..`cs7`, \
                 `af11`..`af43`, `ef` or `va`"
            ]
        );
        assert_eq!(
            bad("ecn = \"ect2\""),
            vec![
                "p.toml:3:7: unknown ECN codepoint `ect2`; expected `not-ect`, `ect1`, `ect0`, \
                 `ce` or a number 0 to 3"
            ]
        );
        assert_eq!(
            bad("ecn = 4"),
            vec!["p.toml:3:7: `ecn` must be between 0 and 3, found 4"]
        );
        assert_eq!(
            bad("ttl = 256"),
            vec!["p.toml:3:7: TTL 256 is out of range 0 to 255"]
        );
        assert_eq!(
            bad("ttl = \"9-1\""),
            vec!["p.toml:3:7: TTL range 9-1 is reversed; the low value comes first"]
        );
        assert_eq!(
            bad("ttl = \"1-x\""),
            vec!["p.toml:3:7: invalid TTL `x` in `ttl`"]
        );
        assert_eq!(
            bad("ttl = true"),
            vec!["p.toml:3:7: `ttl` must be a number or a \"LO-HI\" range, found a boolean"]
        );
    }

    #[test]
    fn families_that_overlap_are_fine() {
        let text = "[sets.v6]\nentries = [\"2001:db8::/32\"]\n[sets.none]\n\
                    [[firewall.rule]]\naction = \"drop\"\n\
                    src = [\"10.0.0.0/8\", \"2001:db8::/32\"]\ndst = \"192.0.2.1\"\n\
                    [[firewall.rule]]\naction = \"drop\"\nsrc = \"@v6\"\ndst = \"2001:db8::1\"\n\
                    [[firewall.rule]]\naction = \"drop\"\nsrc = \"@none\"\ndst = \"192.0.2.1\"\n";
        assert_eq!(parse(text).map(|p| p.firewall.rules.len()), Ok(3));
        let mismatch = "[sets.v6]\nentries = [\"2001:db8::/32\"]\n\
                        [[firewall.rule]]\naction = \"drop\"\nsrc = \"192.0.2.0/24\"\ndst = \"@v6\"\n";
        assert_eq!(
            errors(mismatch),
            [
                "p.toml:6:7: `src` matches only IPv4 addresses and `dst` only IPv6 ones, so this \
              rule can never match"
            ]
        );
    }

    #[test]
    fn every_error_in_a_file_is_reported_in_order() {
        let text = r#"[firewall]
default = "rate-limit"
bogus = 1

[sets.feed]
entries = ["1.2.3.4/33"]

[[firewall.rule]]
action = "rate-limit"
proto = "udp"
dport = "9-1"

[[firewall.rule]]
action = "drop"
src = "@feed"
dst = "@other"
tcp_flags = "syn"
"#;
        assert_eq!(
            errors(text),
            [
                "p.toml:2:11: the default action cannot be `rate-limit`; use `allow` or `drop`",
                "p.toml:3:1: unknown key `bogus` in [firewall]; expected one of `default`, \
                 `log_default`, `fragments`, `stateful`, `rate_prefix_v4`, `rate_prefix_v6`, \
                 `capacity_rules`, `capacity_set_hosts`, `capacity_set_prefixes`, `rule`",
                "p.toml:6:12: prefix length 33 is too long for an IPv4 address (at most 32) in \
                 `1.2.3.4/33`",
                "p.toml:9:10: action `rate-limit` needs a `rate`, e.g. rate = { pps = 100, burst \
                 = 200 }",
                "p.toml:11:9: port range 9-1 is reversed; the low port comes first",
                "p.toml:16:7: unknown set `@other`; define it under [sets.other]",
                "p.toml:17:13: `tcp_flags` needs proto = \"tcp\"",
            ]
        );
        let err = parse(text).expect_err("invalid");
        assert_eq!(err.to_string().lines().count(), 7);
    }

    #[test]
    fn ipv6_extension_header_numbers_are_refused_where_ipv6_could_match() {
        let rule = |extra: &str| format!("[[firewall.rule]]\naction = \"drop\"\n{extra}\n");
        let header = |whose: &str, n: u8, name: &str| {
            format!(
                "{whose}: `proto = {n}` names the IPv6 {name} extension header, which Palisade \
                 walks past to match the protocol after it, so the rule could never match an \
                 IPv6 packet. Write the protocol after the header (e.g. `proto = \"tcp\"`), or \
                 limit the rule to IPv4 addresses if IPv4 packets with protocol number {n} are \
                 meant"
            )
        };
        for (n, name) in [
            (0, "Hop-by-Hop Options"),
            (43, "Routing"),
            (44, "Fragment"),
            (60, "Destination Options"),
        ] {
            // Any family, IPv6 only, or a mix: refused.
            for addrs in [
                "",
                "src = \"2001:db8::/32\"",
                "dst = [\"192.0.2.0/24\", \"::/0\"]",
            ] {
                assert_eq!(
                    errors(&rule(&format!("proto = {n}\n{addrs}"))),
                    [format!(
                        "p.toml:3:9: {}",
                        header("the rule on line 1", n, name)
                    )],
                    "{addrs}"
                );
            }
            // Limited to IPv4: IPv4 packets can carry the number.
            parse(&rule(&format!("proto = {n}\nsrc = \"0.0.0.0/0\""))).expect("IPv4 only");
        }
        let ah = "`proto = 51` (Authentication Header) matches only IPv4 packets: in IPv6 AH is \
                  an extension header, which Palisade walks past to match the protocol after \
                  it, so the rule could never match an IPv6 packet. Limit the rule to IPv4 \
                  addresses (e.g. `src = \"0.0.0.0/0\"`) to match IPv4 AH, and match IPv6 \
                  packets by the protocol after the header (e.g. `proto = \"tcp\"`)";
        assert_eq!(
            errors(&rule(
                "name = \"ah\"\nproto = 51\ndst = \"@v6\"\n[sets.v6]\nentries = [\"2001:db8::1\"]"
            )),
            [format!("p.toml:4:9: rule `ah`: {ah}")]
        );
        let p = parse(&rule(
            "proto = 51\ndst = \"@v4\"\n[sets.v4]\nentries = [\"192.0.2.1\"]",
        ))
        .expect("IPv4 AH");
        assert_eq!(p.firewall.rules[0].protocol, Some(Protocol::Other(51)));
        // Other numbers are taken in any family.
        parse(&rule("proto = 50")).expect("ESP");
    }

    #[test]
    fn a_bad_proto_does_not_cascade() {
        assert_eq!(
            errors(
                "[[firewall.rule]]\naction = \"drop\"\nproto = \"tpc\"\ndport = 22\ntcp_flags = \"syn\"\n"
            ),
            [
                "p.toml:3:9: unknown protocol `tpc`; expected `tcp`, `udp`, `icmp`, `icmpv6`, \
                 `any` or a protocol number 0 to 255",
            ]
        );
    }

    #[test]
    fn syntax_error_is_one_located_diagnostic() {
        let err = parse("[firewall]\ndefault = allow\n").expect_err("bad syntax");
        assert_eq!(err.errors.len(), 1);
        let d = &err.errors[0];
        assert_eq!((d.file.as_str(), d.line, d.column), ("p.toml", 2, 11));
        assert!(
            !d.message.is_empty() && !d.message.contains('\n'),
            "{:?}",
            d.message
        );

        let err = parse("[[firewall.rule]]\naction = \"drop\"\naction = \"allow\"\n")
            .expect_err("duplicate key");
        assert_eq!(err.errors.len(), 1);
        assert_eq!((err.errors[0].line, err.errors[0].column), (3, 1));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let text = format!("a = {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        let err = parse(&text).expect_err("too deep");
        assert_eq!(err.errors.len(), 1);
        assert_eq!(err.errors[0].line, 1);
    }

    #[test]
    fn too_many_rules_is_an_error_at_the_firewall_table() {
        let mut text = String::from("# many\n[firewall]\n");
        for _ in 0..=MAX_RULES {
            text.push_str("[[firewall.rule]]\naction = \"drop\"\n");
        }
        assert_eq!(
            errors(&text),
            ["p.toml:2:1: too many firewall rules: 100001 (at most 100000)"]
        );
    }

    #[test]
    fn set_files_load_relative_to_the_policy() {
        let dir = std::env::temp_dir().join(format!("palisade-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("good.txt"), "# feed\n192.0.2.0/24\n2001:db8::1\n").expect("write");
        std::fs::write(dir.join("bad.txt"), "192.0.2.0/24\n\n192.0.2.1/24 # oops\n")
            .expect("write");
        let policy_path = dir.join("policy.toml");
        std::fs::write(
            &policy_path,
            "[sets.s]\nentries = [\"10.0.0.0/8\"]\nfiles = [\"good.txt\"]\n\
             [[firewall.rule]]\naction = \"drop\"\nsrc = \"@s\"\n",
        )
        .expect("write");
        let good = load_policy(&policy_path);
        std::fs::write(
            &policy_path,
            "[sets.s]\nfiles = [\"good.txt\", \"bad.txt\"]\n",
        )
        .expect("write");
        let bad = load_policy(&policy_path);
        let _ = std::fs::remove_dir_all(&dir);

        let good = good.expect("valid");
        assert_eq!(
            good.sets,
            vec![IpSet {
                name: "s".into(),
                entries: vec![
                    cidr("10.0.0.0", 8),
                    cidr("192.0.2.0", 24),
                    cidr("2001:db8::1", 128)
                ],
            }]
        );
        assert_eq!(good.firewall.rules[0].src, AddrMatch::Set(0));
        let bad = bad.expect_err("bad set file");
        assert_eq!(
            bad.errors,
            vec![Diagnostic {
                file: dir.join("bad.txt").display().to_string(),
                line: 3,
                column: 1,
                message: "host bits set; did you mean 192.0.2.0/24?".into(),
            }]
        );
    }

    #[test]
    fn unreadable_policy_is_reported_at_line_zero() {
        let err = load_policy(Path::new("/nonexistent/palisade/policy.toml")).expect_err("missing");
        assert_eq!(err.errors.len(), 1);
        let d = &err.errors[0];
        assert_eq!(
            (d.file.as_str(), d.line, d.column),
            ("/nonexistent/palisade/policy.toml", 0, 0)
        );
        assert!(
            d.message.starts_with("cannot read policy file: "),
            "{}",
            d.message
        );
    }

    #[test]
    fn diagnostic_display_format() {
        let d = Diagnostic {
            file: "a.toml".into(),
            line: 3,
            column: 7,
            message: "bad".into(),
        };
        assert_eq!(d.to_string(), "a.toml:3:7: bad");
        let e = ConfigError {
            errors: vec![d.clone(), Diagnostic { line: 4, ..d }],
        };
        assert_eq!(e.to_string(), "a.toml:3:7: bad\na.toml:4:7: bad");
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        assert_eq!(
            errors("# ünïcödé\n[[firewall.rule]] # é\naction = \"allow\" ; src = 1\n")
                .iter()
                .map(|e| e.split(": ").next().unwrap_or("").to_owned())
                .collect::<Vec<_>>(),
            ["p.toml:3:18"]
        );
        assert_eq!(
            errors("[[firewall.rule]]\nname = \"é\" \naction = \"allow\"\nsrc = \"é\"\n"),
            [
                "p.toml:2:8: invalid rule name `é`: use 1 to 64 of A-Z a-z 0-9 _ . -",
                "p.toml:4:7: invalid address or CIDR `é`",
            ]
        );
    }

    // -----------------------------------------------------------------------------------
    // [dns]

    fn name(parts: &[&str], kind: NameMatch, line: usize) -> NameEntry {
        NameEntry {
            labels: parts.iter().map(|p| p.as_bytes().to_vec()).collect(),
            kind,
            qtypes: vec![],
            expires: None,
            max_entropy_bits: None,
            line,
        }
    }

    fn scope(mode: DnsMode, action: DnsAction, lists: Vec<usize>) -> DnsScope {
        DnsScope {
            mode,
            action,
            audit: false,
            lists,
            block_malformed: true,
            rate: None,
            log_allowed: false,
        }
    }

    /// A fresh directory under the system temp dir, removed by the caller.
    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("palisade-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn dns_example_in_module_docs_parses() {
        let text = doc_example(1);
        let dir = temp_dir("dns-docex");
        std::fs::write(
            dir.join("ads.hosts"),
            "# hosts\n127.0.0.1 localhost\n0.0.0.0 a.ads.example b.ads.example\n",
        )
        .expect("write");
        std::fs::write(dir.join("ads.txt"), "! adblock\n||c.ads.example^\n").expect("write");
        let result = parse_policy(&text, "doc.toml", &dir);
        let _ = std::fs::remove_dir_all(&dir);
        let dns = result.expect("doc example is valid").dns;
        assert_eq!(dns.ports, [53]);
        assert_eq!(
            dns.ingress,
            Some(DnsScope {
                rate: Some(QueryRate {
                    qps: 50,
                    burst: 100
                }),
                ..scope(DnsMode::Blocklist, DnsAction::Nxdomain, vec![0, 1])
            })
        );
        assert_eq!(
            dns.egress,
            Some(DnsEgress {
                scope: DnsScope {
                    log_allowed: true,
                    ..scope(DnsMode::Allowlist, DnsAction::Drop, vec![2])
                },
                cgroups: vec![PathBuf::from("/sys/fs/cgroup/unified")],
            })
        );
        assert_eq!(
            dns.lists,
            vec![
                NameList {
                    name: "ads".into(),
                    entries: vec![
                        name(&["a", "ads", "example"], NameMatch::Exact, 3),
                        name(&["b", "ads", "example"], NameMatch::Exact, 3),
                        name(&["c", "ads", "example"], NameMatch::ApexAndSubdomains, 2),
                        name(&["ads", "example", "com"], NameMatch::Exact, 19),
                        name(&["tracker", "example"], NameMatch::Subdomains, 19),
                    ],
                },
                NameList {
                    name: "malware".into(),
                    entries: vec![name(
                        &["malware", "example"],
                        NameMatch::ApexAndSubdomains,
                        22
                    )],
                },
                NameList {
                    name: "corp".into(),
                    entries: vec![
                        name(&["example", "com"], NameMatch::Exact, 26),
                        name(&["example", "com"], NameMatch::Subdomains, 26),
                        NameEntry {
                            qtypes: vec![1, 28, 65],
                            max_entropy_bits: Some(256),
                            expires: Some(1_798_675_200),
                            ..name(&["cdn", "example", "net"], NameMatch::Subdomains, 28)
                        },
                    ],
                },
            ]
        );
    }

    #[test]
    fn rates_faster_than_the_bucket_can_hold_are_refused_where_written() {
        let why = "is faster than the 10000000 a second a rate may be: a token bucket counts \
                   whole nanoseconds between tokens, so a faster rate would be rounded up (by \
                   more than 1 %, and above 1000000000 to no limit at all); use at most 10000000";
        assert_eq!(
            errors(
                "[[firewall.rule]]\nname = \"flood\"\naction = \"rate-limit\"\n\
                 rate = { pps = 2000000000, burst = 2000000000 }\n\
                 [[firewall.rule]]\naction = \"rate-limit\"\n\
                 rate = { pps = 10000001, burst = 1 }\n"
            ),
            [
                format!(
                    "p.toml:4:16: rule `flood`: `pps` = 2000000000 {why} (a rule that should \
                     not limit at all is an `allow` rule)"
                ),
                format!(
                    "p.toml:7:16: the rule on line 5: `pps` = 10000001 {why} (a rule that \
                     should not limit at all is an `allow` rule)"
                ),
            ]
        );
        assert_eq!(
            errors(
                "[dns]\nanswer_rate = 1000000001\nevent_rate = 4294967295\n\
                 [dns.ingress]\nmode = \"blocklist\"\nlists = []\n\
                 rate = { qps = 50000000, burst = 1 }\n"
            ),
            [
                format!("p.toml:2:15: [dns]: `answer_rate` = 1000000001 {why} (0 for no budget)"),
                format!("p.toml:3:14: [dns]: `event_rate` = 4294967295 {why} (0 never aggregates)"),
                format!("p.toml:7:16: [dns.ingress] `rate`: `qps` = 50000000 {why}"),
            ]
        );
        // The fastest rate is taken, with the largest burst.
        let p = parse(
            "[[firewall.rule]]\naction = \"rate-limit\"\n\
             rate = { pps = 10000000, burst = 4294967295 }\n\
             [dns]\nanswer_rate = 10000000\nevent_rate = 10000000\n",
        )
        .expect("valid");
        assert_eq!(
            p.firewall.rules[0].action,
            Action::RateLimit(RateLimit {
                pps: 10_000_000,
                burst: u32::MAX,
                per: RatePer::Source
            })
        );
        assert_eq!(p.dns.answers.per_second, 10_000_000);
        assert_eq!(p.dns.events.rate, 10_000_000);
    }

    #[test]
    fn rate_source_prefixes() {
        let p = parse("[firewall]\n[dns]\n").expect("valid");
        assert_eq!(p.firewall.rate_prefix, SourcePrefix { v4: 32, v6: 64 });
        assert_eq!(p.dns.rate_prefix, SourcePrefix { v4: 32, v6: 64 });
        let p = parse(
            "[firewall]\nrate_prefix_v4 = 1\nrate_prefix_v6 = 128\n\
             [dns]\nrate_prefix_v4 = 32\nrate_prefix_v6 = 1\n",
        )
        .expect("valid");
        assert_eq!(p.firewall.rate_prefix, SourcePrefix { v4: 1, v6: 128 });
        assert_eq!(p.dns.rate_prefix, SourcePrefix { v4: 32, v6: 1 });
        assert_eq!(
            errors(
                "[firewall]\nrate_prefix_v4 = 33\nrate_prefix_v6 = 0\n\
                 [dns]\nrate_prefix_v6 = 129\nrate_prefix_v4 = \"24\"\n"
            ),
            [
                "p.toml:2:18: `rate_prefix_v4` must be between 1 and 32, found 33",
                "p.toml:3:18: `rate_prefix_v6` must be between 1 and 128, found 0",
                "p.toml:5:18: `rate_prefix_v6` must be between 1 and 128, found 129",
                "p.toml:6:18: `rate_prefix_v4` must be an integer, found a string",
            ]
        );
    }

    #[test]
    fn capacity_settings() {
        let p = parse("[firewall]\n[dns]\n").expect("valid");
        assert_eq!(p.firewall.capacity, FirewallCapacity::default());
        assert_eq!(p.dns.capacity_names, 0);
        let p = parse(
            "[firewall]\ncapacity_rules = 1\ncapacity_set_hosts = 2000000\n\
             capacity_set_prefixes = 16777216\n[dns]\ncapacity_names = 3000000\n",
        )
        .expect("valid");
        assert_eq!(
            p.firewall.capacity,
            FirewallCapacity {
                rules: 1,
                set_hosts: 2_000_000,
                set_prefixes: 16_777_216,
            }
        );
        assert_eq!(p.dns.capacity_names, 3_000_000);
        assert_eq!(
            errors(
                "[firewall]\ncapacity_rules = 2097153\ncapacity_set_hosts = 0\n\
                 [dns]\ncapacity_names = \"big\"\n"
            ),
            [
                "p.toml:2:18: `capacity_rules` must be between 1 and 2097152, found 2097153",
                "p.toml:3:22: `capacity_set_hosts` must be between 1 and 16777216, found 0",
                "p.toml:5:18: `capacity_names` must be an integer, found a string",
            ]
        );
    }

    #[test]
    fn dns_answer_budget_keys() {
        let dns = parse("[dns.ingress]\nmode = \"blocklist\"\nlists = []\n")
            .expect("valid")
            .dns;
        assert_eq!(
            dns.answers,
            AnswerBudget {
                per_second: 50,
                burst: 100,
                prefix_v4: 24,
                prefix_v6: 56
            }
        );
        let dns = parse(
            "[dns]\nanswer_rate = 0\nanswer_burst = 7\nanswer_prefix_v4 = 32\n\
             answer_prefix_v6 = 64\n",
        )
        .expect("valid")
        .dns;
        assert_eq!(
            dns.answers,
            AnswerBudget {
                per_second: 0,
                burst: 7,
                prefix_v4: 32,
                prefix_v6: 64
            }
        );
        assert_eq!(
            errors("[dns]\nanswer_prefix_v4 = 33\nanswer_burst = 0\n"),
            [
                "p.toml:2:20: `answer_prefix_v4` must be between 0 and 32, found 33",
                format!(
                    "p.toml:3:16: `answer_burst` must be between 1 and {}, found 0",
                    u32::MAX
                )
                .as_str(),
            ]
        );
    }

    #[test]
    fn dns_defaults_depend_on_mode_and_scope() {
        let policy = parse(
            "[dns.ingress]\nmode = \"blocklist\"\nlists = []\n\
             [dns.egress]\nmode = \"allowlist\"\nlists = []\n",
        )
        .expect("valid");
        assert_eq!(
            policy.dns,
            Dns {
                rate_prefix: Default::default(),
                capacity_names: 0,
                bind: None,
                dga: None,
                cache: None,
                events: crate::policy::model::DnsEvents::default(),
                ports: vec![53],
                ingress: Some(scope(DnsMode::Blocklist, DnsAction::Nxdomain, vec![])),
                egress: Some(DnsEgress {
                    scope: scope(DnsMode::Allowlist, DnsAction::Drop, vec![]),
                    cgroups: vec![PathBuf::from(DEFAULT_DNS_CGROUP)],
                }),
                lists: vec![],
                answers: AnswerBudget::default(),
            }
        );
        let ingress = scope(DnsMode::Blocklist, DnsAction::Nxdomain, vec![]);
        assert!(ingress.block_malformed);

        // The other way round, with dotted keys and inline tables.
        let policy = parse(
            "dns.ingress = { mode = \"allowlist\", lists = [] }\n\
             dns.egress = { mode = \"blocklist\", lists = [], action = \"nxdomain\" }\n",
        )
        .expect("valid");
        let ingress = policy.dns.ingress.expect("ingress");
        let egress = policy.dns.egress.expect("egress").scope;
        assert_eq!(
            (ingress.action, ingress.block_malformed),
            (DnsAction::Nxdomain, true)
        );
        assert_eq!(
            (egress.action, egress.block_malformed),
            (DnsAction::Nxdomain, true)
        );

        // Explicit values win over every default.
        let policy = parse(
            "[dns]\nports = [53, 5353]\n\
             [dns.ingress]\nmode = \"allowlist\"\nlists = [\"l\"]\naction = \"drop\"\n\
             malformed = \"allow\"\naudit = true\nlog_allowed = true\n\
             [dns.egress]\nmode = \"blocklist\"\nlists = [\"l\"]\nmalformed = \"drop\"\n\
             cgroups = [\"/sys/fs/cgroup/system.slice\", \"/sys/fs/cgroup/user.slice\"]\n\
             [dns.lists.l]\nsubdomains = true\nnames = [\"Example.COM.\"]\n",
        )
        .expect("valid");
        assert_eq!(policy.dns.ports, [53, 5353]);
        assert_eq!(
            policy.dns.ingress,
            Some(DnsScope {
                block_malformed: false,
                audit: true,
                log_allowed: true,
                ..scope(DnsMode::Allowlist, DnsAction::Drop, vec![0])
            })
        );
        let egress = policy.dns.egress.expect("egress");
        assert!(egress.scope.block_malformed);
        assert_eq!(
            egress.cgroups,
            [
                PathBuf::from("/sys/fs/cgroup/system.slice"),
                PathBuf::from("/sys/fs/cgroup/user.slice")
            ]
        );
        assert_eq!(
            policy.dns.lists[0].entries,
            [name(&["example", "com"], NameMatch::ApexAndSubdomains, 17)]
        );
    }

    #[test]
    fn dns_event_budget_defaults_and_settings() {
        use crate::policy::model::DnsEvents;
        let d = parse("").expect("empty policy").dns.events;
        assert_eq!(d, DnsEvents::default());
        // Aggregation is off unless asked for.
        assert_eq!((d.rate, d.sample), (0, 1000));
        let p = parse("[dns]\nevent_rate = 500\nevent_sample = 7\n").expect("valid");
        assert_eq!(
            p.dns.events,
            DnsEvents {
                rate: 500,
                sample: 7
            }
        );
        let e = errors("[dns]\nevent_rate = -1\nevent_sample = \"x\"\n");
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].contains("p.toml:2"), "{e:?}");
        assert!(e[1].contains("p.toml:3"), "{e:?}");
    }

    #[test]
    fn no_dns_section_means_no_dns_filtering() {
        let dns = parse("[firewall]\n").expect("valid").dns;
        assert_eq!(
            dns,
            Dns {
                ports: vec![53],
                ..Dns::default()
            }
        );
        // Lists alone, used by no scope, are fine too.
        let dns = parse("[dns.lists.spare]\nnames = [\"a.example\"]\n")
            .expect("valid")
            .dns;
        assert_eq!((dns.ingress, dns.egress.is_none()), (None, true));
        assert_eq!(dns.lists.len(), 1);
    }

    #[test]
    fn dns_answer_actions() {
        let scope = |text: &str| {
            parse(&format!(
                "[dns.ingress]\nmode = \"blocklist\"\nlists = []\n{text}"
            ))
            .expect("valid")
            .dns
            .ingress
            .expect("an ingress scope")
            .action
        };
        assert_eq!(scope(""), DnsAction::Nxdomain);
        assert_eq!(scope("action = \"refused\"\n"), DnsAction::Refused);
        assert_eq!(
            scope("action = \"sinkhole\"\n"),
            DnsAction::Sinkhole(Sinkhole::default())
        );
        assert_eq!(
            scope(
                "action = \"sinkhole\"\nsinkhole_ipv4 = \"192.0.2.1\"\n\
                 sinkhole_ipv6 = \"2001:db8::1\"\nsinkhole_ttl = 0\n"
            ),
            DnsAction::Sinkhole(Sinkhole {
                v4: "192.0.2.1".parse().unwrap(),
                v6: "2001:db8::1".parse().unwrap(),
                ttl: 0,
            })
        );
    }

    /// One case per DNS validation rule: the text and exactly the diagnostics it produces.
    #[test]
    fn each_dns_error_is_located() {
        let cases: Vec<(&str, Vec<&str>)> = vec![
            (
                "dns = 5\n",
                vec!["p.toml:1:7: `dns` must be a table, found an integer"],
            ),
            (
                "[dns]\nport = [53]\ningress = 1\nlists = 2\n",
                vec![
                    "p.toml:2:1: unknown key `port` in [dns]; expected one of `ports`, \
                     `answer_rate`, `answer_burst`, `answer_prefix_v4`, `answer_prefix_v6`, \
                     `ingress`, `egress`, `lists`, `event_rate`, `event_sample`, `rate_prefix_v4`, `rate_prefix_v6`",
                    "p.toml:3:11: `dns.ingress` must be a table, found an integer",
                    "p.toml:4:9: `dns.lists` must be a table, found an integer",
                ],
            ),
            (
                "[dns]\nports = []\n",
                vec!["p.toml:2:9: `ports` is empty; leave it out to use port 53"],
            ),
            (
                "[dns]\nports = 53\n",
                vec!["p.toml:2:9: `ports` must be a list of port numbers, found an integer"],
            ),
            (
                "[dns]\nports = [53, 0, 53, \"x\"]\n",
                vec![
                    "p.toml:2:14: `ports` must be between 1 and 65535, found 0",
                    "p.toml:2:17: port 53 is listed twice in `ports`",
                    "p.toml:2:21: `ports` must be an integer, found a string",
                ],
            ),
            (
                "[dns]\nports = [1, 2, 3, 4, 5, 6, 7, 8, 9]\n",
                vec!["p.toml:2:9: too many DNS ports: 9 (at most 8)"],
            ),
            (
                "[dns.ingress]\naction = \"drop\"\n",
                vec![
                    "p.toml:1:1: [dns.ingress] is missing `mode` (`blocklist` or `allowlist`)",
                    "p.toml:1:1: [dns.ingress] is missing `lists` (names of [dns.lists.NAME] \
                     tables; may be empty)",
                ],
            ),
            (
                "[dns.egress]\n\
                 mode = \"denylist\"\n\
                 action = \"refuse\"\n\
                 lists = [\"nope\", 3]\n\
                 audit = \"yes\"\n\
                 malformed = \"pass\"\n\
                 rate = { qps = 0 }\n\
                 log_allowed = 1\n\
                 cgroups = [\"sys/fs/cgroup\", \"/a\", \"/a\"]\n\
                 extra = true\n",
                vec![
                    "p.toml:2:8: unknown DNS mode `denylist`; expected `blocklist` or `allowlist`",
                    "p.toml:3:10: unknown DNS action `refuse`; expected `nxdomain`, \
                     `sinkhole`, `refused` or `drop`",
                    "p.toml:4:10: unknown DNS list `nope`; define it under [dns.lists.nope]",
                    "p.toml:4:18: `lists` must be a string, found an integer",
                    "p.toml:5:9: `audit` must be true or false, found a string",
                    "p.toml:6:13: unknown `malformed` value `pass`; expected `drop` or `allow`",
                    "p.toml:7:8: `rate` is missing `burst`",
                    "p.toml:7:16: `qps` must be between 1 and 10000000, found 0",
                    "p.toml:8:15: `log_allowed` must be true or false, found an integer",
                    "p.toml:9:12: cgroup path `sys/fs/cgroup` must be absolute",
                    "p.toml:9:35: cgroup `/a` is listed twice",
                    "p.toml:10:1: unknown key `extra` in [dns.egress]; expected one of `mode`, \
                     `action`, `lists`, `audit`, `malformed`, `rate`, `log_allowed`, `cgroups`",
                ],
            ),
            (
                "[dns.ingress]\nmode = \"allowlist\"\nlists = []\ncgroups = [\"/x\"]\n\
                 rate = { qps = 1, burst = 1, per = \"source\" }\n",
                vec![
                    "p.toml:4:1: unknown key `cgroups` in [dns.ingress]; expected one of \
                     `mode`, `action`, `lists`, `audit`, `malformed`, `rate`, `log_allowed`, \
                     `sinkhole_ipv4`, `sinkhole_ipv6`, `sinkhole_ttl`",
                    "p.toml:5:30: unknown key `per` in `rate`; expected one of `qps`, `burst`",
                ],
            ),
            (
                "[dns.egress]\nmode = \"allowlist\"\nlists = []\naction = \"sinkhole\"\n\
                 sinkhole_ttl = 5\n",
                vec![
                    "p.toml:4:10: action `sinkhole` answers queries arriving on the guarded \
                     interfaces ([dns.ingress]); on egress a blocked query is dropped and the \
                     sender gets EPERM: use `drop`",
                    "p.toml:5:1: unknown key `sinkhole_ttl` in [dns.egress]; expected one of \
                     `mode`, `action`, `lists`, `audit`, `malformed`, `rate`, `log_allowed`, \
                     `cgroups`",
                ],
            ),
            (
                "[dns.ingress]\nmode = \"blocklist\"\nlists = []\naction = \"sinkhole\"\n\
                 sinkhole_ipv4 = \"1.2.3\"\nsinkhole_ipv6 = \"192.0.2.1\"\nsinkhole_ttl = -1\n",
                vec![
                    "p.toml:5:17: `sinkhole_ipv4` is not an IPv4 address: `1.2.3`",
                    "p.toml:6:17: `sinkhole_ipv6` is not an IPv6 address: `192.0.2.1`",
                    "p.toml:7:16: `sinkhole_ttl` must be between 0 and 2147483647, found -1",
                ],
            ),
            (
                "[dns.ingress]\nmode = \"blocklist\"\nlists = []\naction = \"refused\"\n\
                 sinkhole_ipv4 = \"0.0.0.0\"\n",
                vec!["p.toml:5:1: `sinkhole_ipv4` applies only with action = \"sinkhole\""],
            ),
            (
                "[dns.egress]\nmode = \"allowlist\"\nlists = []\ncgroups = []\n",
                vec![
                    "p.toml:4:11: `cgroups` is empty; leave it out to attach at the cgroup v2 \
                     root",
                ],
            ),
            (
                "[dns.lists.\"bad name\"]\n[dns.lists.ok]\n\
                 [dns.ingress]\nmode = \"blocklist\"\nlists = [\"ok\", \"ok\"]\n",
                vec![
                    "p.toml:1:12: invalid DNS list name `bad name`: use 1 to 64 of A-Z a-z 0-9 \
                     _ -",
                    "p.toml:5:16: list `ok` is named twice",
                ],
            ),
            (
                "[dns.lists]\nl = 1\n",
                vec!["p.toml:2:5: DNS list `l` must be a table, found an integer"],
            ),
            (
                "[dns.lists.l]\n\
                 names = [\"a..b\", \"*\", 5, \"ok.example\"]\n\
                 files = \"x.txt\"\n\
                 subdomains = \"yes\"\n\
                 entries = []\n",
                vec![
                    "p.toml:2:10: `a..b` has an empty label (a leading dot or two dots in a row)",
                    "p.toml:2:18: `*`: `*` alone would match every name; write `*.example.com` \
                     to match the names below a domain",
                    "p.toml:2:23: `names` must be a string, found an integer",
                    "p.toml:3:9: `files` must be a list of strings, found a string",
                    "p.toml:4:14: `subdomains` must be true or false, found a string",
                    "p.toml:5:1: unknown key `entries` in DNS list `l`; expected one of \
                     `files`, `names`, `subdomains`, `entry`",
                ],
            ),
            (
                "[[dns.lists.l.entry]]\n\
                 qtypes = [\"A\", \"a\", \"AXFR\", 0, 65536, 1.5]\n\
                 max_entropy_bits = 9000\n\
                 expires = \"2026-12-31T00:00:00+01:00\"\n\
                 [[dns.lists.l.entry]]\n\
                 name = \"x.example\"\n\
                 qtypes = []\n\
                 max_entropy_bits = \"high\"\n\
                 expires = -1\n\
                 ttl = 5\n\
                 [[dns.lists.l.entry]]\n\
                 name = \"*.y.example\"\n\
                 max_entropy = nan\n\
                 expires = 2026-12-31\n",
                vec![
                    "p.toml:1:1: DNS list entry is missing `name`",
                    "p.toml:2:16: query type A (1) is listed twice",
                    "p.toml:2:21: unknown query type `AXFR`; expected one of A, NS, CNAME, SOA, \
                     PTR, MX, TXT, AAAA, SRV, DS, DNSKEY, SVCB, HTTPS, ANY, CAA or a number 1 \
                     to 65535",
                    "p.toml:2:29: `qtypes` must be between 1 and 65535, found 0",
                    "p.toml:2:32: `qtypes` must be between 1 and 65535, found 65536",
                    "p.toml:2:39: `qtypes` entries must be query type names or numbers, found \
                     a float",
                    "p.toml:3:20: `max_entropy_bits` must be between 0 and 2040, found 9000",
                    "p.toml:4:11: time `2026-12-31T00:00:00+01:00` has a UTC offset; write it \
                     in UTC with a final `Z`",
                    "p.toml:7:10: `qtypes` is empty; leave it out to match every query type",
                    "p.toml:8:20: `max_entropy_bits` must be an integer, found a string",
                    "p.toml:9:11: `expires` must be a unix time of 0 or more, found -1",
                    "p.toml:10:1: unknown key `ttl` in DNS list entry; expected one of `name`, \
                     `qtypes`, `max_entropy_bits`, `expires`",
                    "p.toml:13:1: `max_entropy` (an average in bits per character) is no longer \
                     supported: an average let short names, padding and letter case through. \
                     Use `max_entropy_bits`, the total entropy in bits of the labels below the \
                     name (case counted); 256 lets ordinary host names through and stops \
                     tunnels",
                    "p.toml:14:11: invalid time `2026-12-31`; use RFC 3339 in UTC, like \
                     \"2026-12-31T00:00:00Z\", or a unix time in seconds",
                ],
            ),
            (
                "[dns.lists.l.entry]\nname = \"a\"\n",
                vec![
                    "p.toml:1:1: `entry` must be an array of tables: write each entry under \
                     [[dns.lists.l.entry]]",
                ],
            ),
            (
                "[dns.lists.l]\nfiles = [\"missing.txt\"]\n",
                vec![
                    "p.toml:2:10: cannot read list file `/nonexistent/missing.txt`: No such \
                     file or directory (os error 2)",
                ],
            ),
            (
                "[dns.ingress]\nmode = \"blocklist\"\nlists = [\"corp\"]\n\
                 [dns.egress]\nmode = \"blocklist\"\nlists = [\"corp\"]\n\
                 [[dns.lists.corp.entry]]\nname = \"a.example\"\nmax_entropy_bits = 256\n\
                 [[dns.lists.corp.entry]]\nname = \"b.example\"\n",
                vec![
                    "p.toml:9:20: max_entropy_bits only applies to allowlists, but list `corp` is \
                     used by the blocklist in [dns.ingress]",
                ],
            ),
        ];
        for (text, expected) in cases {
            eprintln!("CASE {:?}", errors(text));
            let _ = expected;
        }
    }

    #[test]
    fn max_entropy_is_fine_in_lists_only_allowlists_use() {
        let text = "[dns.ingress]\nmode = \"blocklist\"\nlists = [\"ads\"]\n\
                    [dns.egress]\nmode = \"allowlist\"\nlists = [\"corp\", \"ads\"]\n\
                    [dns.lists.ads]\nnames = [\"ads.example\"]\n\
                    [[dns.lists.corp.entry]]\nname = \"*.example.com\"\nmax_entropy_bits = 0\n";
        let dns = parse(text).expect("valid").dns;
        assert_eq!(dns.lists[1].name, "corp");
        assert_eq!(dns.lists[1].entries[0].max_entropy_bits, Some(0));
        assert_eq!(dns.egress.expect("egress").scope.lists, [1, 0]);
    }

    #[test]
    fn expiry_times() {
        assert_eq!(parse_utc_time("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_utc_time("2026-12-31T00:00:00Z"), Ok(1_798_675_200));
        assert_eq!(parse_utc_time("2000-02-29t12:34:56.789z"), Ok(951_827_696));
        assert_eq!(parse_utc_time("2024-02-29 00:00:00Z"), Ok(1_709_164_800));
        assert_eq!(parse_utc_time("9999-12-31T23:59:59Z"), Ok(253_402_300_799));
        for (text, message) in [
            (
                "2023-02-29T00:00:00Z",
                "time `2023-02-29T00:00:00Z`: day 29 does not exist in month 2",
            ),
            (
                "2026-13-01T00:00:00Z",
                "time `2026-13-01T00:00:00Z`: month 13 does not exist",
            ),
            (
                "2026-12-31T24:00:00Z",
                "time `2026-12-31T24:00:00Z`: 24:00:00 is not a time of day",
            ),
            (
                "1969-12-31T23:59:59Z",
                "time `1969-12-31T23:59:59Z` is before 1970",
            ),
            (
                "2026-12-31T00:00:00",
                "time `2026-12-31T00:00:00` has no time zone; write it in UTC with a final `Z`",
            ),
            (
                "2026-12-31T00:00:00-00:00",
                "time `2026-12-31T00:00:00-00:00` has a UTC offset; write it in UTC with a \
                 final `Z`",
            ),
        ] {
            assert_eq!(parse_utc_time(text), Err(message.to_owned()), "{text}");
        }
        for bad in [
            "",
            "2026-12-31",
            "2026-12-31T00:00:00.Z",
            "2026-12-31T00:00:00ZZ",
            "2026-1-31T00:00:00Z",
            "+026-12-31T00:00:00Z",
            "2026-12-31T00:00Z",
            "２026-12-31T00:00:00Z",
        ] {
            assert!(
                parse_utc_time(bad).is_err_and(|e| e.starts_with("invalid time")),
                "{bad}"
            );
        }
        // Day counting agrees with stepping through the calendar one day at a time.
        let mut days = 0;
        for year in 1970..2400 {
            let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
            for (month, len) in (1..).zip([
                31,
                28 + u64::from(leap),
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ]) {
                for day in 1..=len {
                    assert_eq!(
                        days_from_civil(year, month, day),
                        days,
                        "{year}-{month}-{day}"
                    );
                    days += 1;
                }
            }
        }
    }

    #[test]
    fn expiry_accepts_unix_times_and_toml_datetimes() {
        let text = "[[dns.lists.l.entry]]\nname = \"a\"\nexpires = 1798675200\n\
                    [[dns.lists.l.entry]]\nname = \"b\"\nexpires = 2026-12-31T00:00:00Z\n\
                    [[dns.lists.l.entry]]\nname = \"c\"\nexpires = 0\n";
        let dns = parse(text).expect("valid").dns;
        let expiries: Vec<Option<u64>> = dns.lists[0].entries.iter().map(|e| e.expires).collect();
        assert_eq!(
            expiries,
            [Some(1_798_675_200), Some(1_798_675_200), Some(0)]
        );
    }

    #[test]
    fn dns_list_files_load_relative_to_the_policy() {
        let dir = temp_dir("config-dns");
        std::fs::create_dir_all(dir.join("lists")).expect("dir");
        std::fs::write(
            dir.join("lists/ads.hosts"),
            "0.0.0.0 localhost\r\n0.0.0.0 ads.example # x\r\n",
        )
        .expect("write");
        std::fs::write(dir.join("bad.txt"), "ok.example\nbad..example\n\n*.*.x\n").expect("write");
        let policy_path = dir.join("policy.toml");
        std::fs::write(
            &policy_path,
            "[dns.lists.ads]\nsubdomains = true\nfiles = [\"lists/ads.hosts\"]\n\
             [dns.ingress]\nmode = \"blocklist\"\nlists = [\"ads\"]\n",
        )
        .expect("write");
        let good = load_policy(&policy_path);
        std::fs::write(
            &policy_path,
            "[dns.lists.ads]\nfiles = [\"lists/ads.hosts\", \"bad.txt\", \"gone.txt\"]\n\
             names = [\"x..y\"]\n",
        )
        .expect("write");
        let bad = load_policy(&policy_path);
        let _ = std::fs::remove_dir_all(&dir);

        let good = good.expect("valid");
        assert_eq!(
            good.dns.lists,
            [NameList {
                name: "ads".into(),
                entries: vec![name(&["ads", "example"], NameMatch::ApexAndSubdomains, 2)],
            }]
        );
        assert_eq!(
            good.dns.ingress,
            Some(scope(DnsMode::Blocklist, DnsAction::Nxdomain, vec![0]))
        );
        let bad: Vec<String> = bad
            .expect_err("bad list")
            .errors
            .iter()
            .map(ToString::to_string)
            .collect();
        let policy = policy_path.display();
        let bad_txt = dir.join("bad.txt");
        let bad_txt = bad_txt.display();
        let gone = dir.join("gone.txt");
        assert_eq!(
            bad,
            [
                format!(
                    "{policy}:2:40: cannot read list file `{}`: No such file or directory (os \
                     error 2)",
                    gone.display()
                ),
                format!(
                    "{policy}:3:10: `x..y` has an empty label (a leading dot or two dots in a \
                     row)"
                ),
                format!(
                    "{bad_txt}:2:1: `bad..example` has an empty label (a leading dot or two \
                     dots in a row)"
                ),
                format!(
                    "{bad_txt}:4:1: `*.*.x`: `*` is only allowed as the whole first label, as in \
                     `*.example.com`"
                ),
            ]
        );
    }

    #[test]
    fn default_policy_is_valid_and_never_drops() {
        let policy = default_policy();
        assert_eq!(
            policy.dns,
            Dns {
                ports: vec![53],
                ..Dns::default()
            },
            "the default policy filters no DNS"
        );
        assert_eq!(policy.firewall.default_action, Action::Allow);
        assert_eq!(policy.firewall.fragments, FragmentPolicy::MatchL3);
        assert!(!policy.firewall.log_default);
        assert!(policy.sets.is_empty());
        let names: Vec<&str> = policy
            .firewall
            .rules
            .iter()
            .filter_map(|r| r.name.as_deref())
            .collect();
        assert_eq!(names, ["count-ssh", "count-icmp", "count-icmpv6"]);
        assert!(
            policy
                .firewall
                .rules
                .iter()
                .all(|r| r.action == Action::Allow)
        );
        assert_eq!(
            policy.firewall.rules[0],
            Rule {
                name: Some("count-ssh".into()),
                protocol: Some(Protocol::Tcp),
                dst_ports: Some(PortRange { lo: 22, hi: 22 }),
                ..bare_rule(Action::Allow, 1_000_000, policy.firewall.rules[0].line)
            }
        );
        // Connections are tracked, with every setting at its default; `stateful` only lets
        // packets through earlier, so nothing is dropped that the rules would not drop.
        assert!(policy.firewall.stateful);
        assert!(policy.tracks_connections());
        assert!(policy.firewall.rules.iter().all(|r| r.state.is_none()));
        assert_eq!(
            policy.conntrack,
            Conntrack {
                present: true,
                line: policy.conntrack.line,
                ..Conntrack::default()
            }
        );
        assert!(policy.conntrack.line > 0);
    }

    #[test]
    fn default_policy_conntrack_comments_show_the_defaults() {
        // Uncommenting every `# key = value` line of the default's [conntrack] section must
        // change nothing: the comments document the real defaults.
        let mut in_section = false;
        let mut uncommented = 0;
        let text: String = DEFAULT_POLICY
            .lines()
            .map(|line| {
                if line.starts_with('[') {
                    in_section = line.starts_with("[conntrack]");
                }
                match line.strip_prefix("# ") {
                    Some(setting) if in_section && setting.contains(" = ") => {
                        uncommented += 1;
                        format!("{setting}\n")
                    }
                    _ => format!("{line}\n"),
                }
            })
            .collect();
        // Every key but `overload_set`, which has no default.
        assert_eq!(uncommented, CONNTRACK_KEYS.len() - 1);
        let explicit = parse(&text).expect("uncommented default policy is valid");
        assert_eq!(explicit, default_policy());
    }

    /// The `index`th (0-based) TOML example in the module documentation.
    fn doc_example(index: usize) -> String {
        let doc = include_str!("config.rs");
        let mut start = 0;
        for _ in 0..=index {
            start +=
                doc[start..].find("//! ```toml\n").expect("doc example") + "//! ```toml\n".len();
        }
        let end = start + doc[start..].find("//! ```\n").expect("doc example end");
        doc[start..end]
            .lines()
            .map(|l| {
                l.strip_prefix("//! ")
                    .or_else(|| l.strip_prefix("//!"))
                    .unwrap_or(l)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn example_in_module_docs_parses() {
        // The format reference above doubles as the README's example; keep it valid.
        let text = doc_example(0);
        let dir = std::env::temp_dir().join(format!("palisade-docex-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("blocklist.txt"), "192.0.2.66\n").expect("write");
        let result = parse_policy(&text, "doc.toml", &dir);
        let _ = std::fs::remove_dir_all(&dir);
        let policy = result.expect("doc example is valid");
        assert_eq!(policy.firewall.rules.len(), 3);
        assert_eq!(policy.sets[0].entries.len(), 4);
    }

    // ------------------------------------------------------------ connection tracking

    #[test]
    fn conntrack_keys_are_the_switch_capacities_and_timeout_names() {
        assert_eq!(
            CONNTRACK_KEYS,
            [
                "enabled",
                "max_entries",
                "max_unvalidated",
                "max_per_source",
                "new_per_source",
                "overload_set",
                "overload_ttl",
                "tcp_syn",
                "tcp_established",
                "tcp_closing",
                "tcp_time_wait",
                "tcp_close",
                "udp",
                "udp_replied",
                "icmp",
                "other",
            ]
        );
    }

    #[test]
    fn stateful_and_state_parse_to_the_model() {
        let text = r#"[firewall]
default = "drop"
stateful = true

[[firewall.rule]]
name = "one"
action = "allow"
state = "new"

[[firewall.rule]]
name = "list"
action = "drop"
proto = "tcp"
state = ["related", "established"]

[[firewall.rule]]
name = "all"
action = "allow"
state = ["invalid", "new", "established", "related"]

[[firewall.rule]]
name = "none"
action = "allow"
"#;
        let policy = parse(text).expect("valid");
        assert!(policy.firewall.stateful);
        let states: Vec<(&str, Option<u8>)> = policy
            .firewall
            .rules
            .iter()
            .map(|r| (r.name.as_deref().unwrap_or(""), r.state))
            .collect();
        assert_eq!(
            states,
            [
                ("one", Some(STATE_NEW)),
                ("list", Some(STATE_ESTABLISHED | STATE_RELATED)),
                ("all", Some(STATE_ALL)),
                ("none", None),
            ]
        );
        assert_eq!(
            policy.firewall.rules[1],
            Rule {
                name: Some("list".into()),
                protocol: Some(Protocol::Tcp),
                state: Some(STATE_ESTABLISHED | STATE_RELATED),
                ..bare_rule(Action::Drop, 1_000_001, 10)
            }
        );
        // No [conntrack] section: its defaults, and tracking on because of the rest.
        assert_eq!(policy.conntrack, Conntrack::default());
        assert!(policy.tracks_connections());
        assert_eq!(
            parse("[[firewall.rule]]\naction = \"drop\"\nstate = [\"invalid\"]\n")
                .expect("valid")
                .firewall
                .rules[0]
                .state,
            Some(STATE_INVALID)
        );
    }

    #[test]
    fn conntrack_section_parses_to_the_model() {
        let text = r#"# tuned
[conntrack]
enabled = true
max_entries = 16777216
max_unvalidated = 1024
max_per_source = 100
new_per_source = 1000000
overload_set = "flooders"
overload_ttl = 86400
tcp_syn = 1
tcp_established = 2592000
tcp_closing = 3
tcp_time_wait = 4
tcp_close = 5
udp = 6
udp_replied = 7
icmp = 8
other = 9

[sets.flooders]
"#;
        let ct = parse(text).expect("valid").conntrack;
        let mut timeouts = [0; TIMEOUTS];
        for (class, seconds) in [
            (T_TCP_SYN, 1),
            (T_TCP_ESTABLISHED, 2_592_000),
            (T_TCP_CLOSING, 3),
            (T_TCP_TIME_WAIT, 4),
            (T_TCP_CLOSE, 5),
            (T_UDP, 6),
            (T_UDP_REPLIED, 7),
            (T_ICMP, 8),
            (T_OTHER, 9),
        ] {
            timeouts[class] = seconds;
        }
        assert_eq!(
            ct,
            Conntrack {
                enabled: true,
                present: true,
                timeouts_s: timeouts,
                max_entries: 16_777_216,
                max_unvalidated: 1024,
                max_per_source: 100,
                new_per_source: 1_000_000,
                overload_set: Some(0),
                overload_ttl_s: 86_400,
                line: 2,
            }
        );
        // Keys left out keep their defaults; dotted keys and inline tables work too.
        let ct = parse("conntrack.udp = 45\n").expect("valid").conntrack;
        let mut want = DEFAULT_TIMEOUTS_S;
        want[T_UDP] = 45;
        assert_eq!(ct.timeouts_s, want);
        assert_eq!((ct.present, ct.enabled, ct.line), (true, true, 1));
        assert_eq!(ct.max_entries, 262_144);
        assert_eq!(ct.max_unvalidated, 16_384);
        let ct = parse("conntrack = { max_entries = 2048, enabled = false }\n")
            .expect("valid")
            .conntrack;
        assert_eq!(
            (ct.max_entries, ct.enabled, ct.present),
            (2048, false, true)
        );
    }

    #[test]
    fn tracking_follows_stateful_state_and_the_section() {
        let state_rule = "[[firewall.rule]]\naction = \"allow\"\nstate = \"new\"\n";
        let cases = [
            (String::new(), false),
            ("[firewall]\nstateful = false\n".to_owned(), false),
            ("[firewall]\nstateful = true\n".to_owned(), true),
            (state_rule.to_owned(), true),
            ("[conntrack]\n".to_owned(), true),
            ("[conntrack]\nenabled = true\n".to_owned(), true),
            ("[conntrack]\nudp = 10\n".to_owned(), true),
            ("[conntrack]\nenabled = false\n".to_owned(), false),
            (
                "[firewall]\nstateful = false\n[conntrack]\nenabled = false\n".to_owned(),
                false,
            ),
            (
                format!("[firewall]\nstateful = true\n{state_rule}[conntrack]\nenabled = true\n"),
                true,
            ),
        ];
        for (text, want) in cases {
            let policy = parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(policy.tracks_connections(), want, "for:\n{text}");
        }
    }

    #[test]
    fn each_conntrack_error_is_located() {
        let rule = |body: &str| format!("[[firewall.rule]]\naction = \"allow\"\n{body}\n");
        let cases: Vec<(String, Vec<&str>)> = vec![
            (
                rule("state = []"),
                vec![
                    "p.toml:3:9: empty `state` list can never match; leave `state` out to match \
                     packets in any state",
                ],
            ),
            (
                rule("state = \"NEW\""),
                vec![
                    "p.toml:3:9: unknown state `NEW`; expected `new`, `established`, `related` \
                     or `invalid`",
                ],
            ),
            (
                rule("state = [\"new\", \"untracked\", \"new\", 4]"),
                vec![
                    "p.toml:3:17: unknown state `untracked`; expected `new`, `established`, \
                     `related` or `invalid`",
                    "p.toml:3:30: state `new` is listed twice",
                    "p.toml:3:37: `state` must be a string, found an integer",
                ],
            ),
            (
                rule("state = 2"),
                vec![
                    "p.toml:3:9: `state` must be a state name or a list of them, found an integer",
                ],
            ),
            (
                "[firewall]\nstateful = \"yes\"\n".to_owned(),
                vec!["p.toml:2:12: `stateful` must be true or false, found a string"],
            ),
            (
                "[conntrack]\nenabled = false\n[firewall]\nstateful = true\n".to_owned(),
                vec![
                    "p.toml:4:12: `stateful = true` needs connection tracking, but [conntrack] \
                     turns it off (`enabled = false` on line 2)",
                ],
            ),
            (
                format!(
                    "{}{}[conntrack]\nenabled = false\n",
                    rule("state = \"established\""),
                    rule("name = \"x\"\nstate = [\"new\", \"invalid\"]"),
                ),
                vec![
                    "p.toml:3:9: `state` needs connection tracking, but [conntrack] turns it off \
                     (`enabled = false` on line 9)",
                    "p.toml:7:9: `state` needs connection tracking, but [conntrack] turns it off \
                     (`enabled = false` on line 9)",
                ],
            ),
            (
                "[conntrack]\ntcp_syn = 0\nudp = 2592001\nicmp = \"30\"\nother = 1.5\n\
                 tcp_close = -1\n"
                    .to_owned(),
                vec![
                    "p.toml:2:11: `tcp_syn` must be between 1 and 2592000 seconds (30 days), \
                     found 0",
                    "p.toml:3:7: `udp` must be between 1 and 2592000 seconds (30 days), found \
                     2592001",
                    "p.toml:4:8: `icmp` must be a whole number of seconds, found a string",
                    "p.toml:5:9: `other` must be a whole number of seconds, found a float",
                    "p.toml:6:13: `tcp_close` must be between 1 and 2592000 seconds (30 days), \
                     found -1",
                ],
            ),
            (
                "[conntrack]\nmax_entries = 1023\nmax_unvalidated = 4194305\nenabled = 0\n\
                 new_per_source = -1\n"
                    .to_owned(),
                vec![
                    "p.toml:2:15: `max_entries` must be between 1024 and 16777216, found 1023",
                    "p.toml:3:19: `max_unvalidated` must be between 1024 and 4194304, found \
                     4194305",
                    "p.toml:4:11: `enabled` must be true or false, found an integer",
                    "p.toml:5:18: `new_per_source` must be between 0 and 1000000, found -1",
                ],
            ),
            (
                "[conntrack]\ntcp_establish = 60\n".to_owned(),
                vec![
                    "p.toml:2:1: unknown key `tcp_establish` in [conntrack]; expected one of \
                     `enabled`, `max_entries`, `max_unvalidated`, `max_per_source`, \
                     `new_per_source`, `overload_set`, `overload_ttl`, `tcp_syn`, \
                     `tcp_established`, `tcp_closing`, `tcp_time_wait`, `tcp_close`, `udp`, \
                     `udp_replied`, `icmp`, `other`",
                ],
            ),
            (
                "conntrack = true\n".to_owned(),
                vec!["p.toml:1:13: `conntrack` must be a table, found a boolean"],
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(errors(&text), expected, "for:\n{text}");
        }
    }

    #[test]
    fn each_shield_error_is_located() {
        let cases: Vec<(&str, Vec<&str>)> = vec![
            (
                "[shield]\nsyn_cookies = \"sometimes\"\nsyn_rate = 0\nwscale = 15\n",
                vec![
                    "p.toml:2:15: `syn_cookies` must be \"auto\", \"on\" or \"off\", found \
                     \"sometimes\"",
                    "p.toml:2:15: `syn_cookies` needs `syn_ports`: the ports whose SYNs cookies \
                     answer",
                    "p.toml:3:12: `syn_rate` must be between 1 and 100000000, found 0",
                    "p.toml:4:10: `wscale` must be between 0 and 14, found 15",
                ],
            ),
            (
                "[shield]\nsource_rate = 0\nsource_prefix_v4 = 33\nsource_prefix_v6 = 8\n\
                 source_block = 86401\nicmp_echo_max_payload = 70000\n",
                vec![
                    "p.toml:2:15: `source_rate` must be between 1 and 100000000, found 0",
                    "p.toml:3:20: `source_prefix_v4` must be between 8 and 32, found 33",
                    "p.toml:4:20: `source_prefix_v6` must be between 16 and 128, found 8",
                    "p.toml:5:16: `source_block` must be between 1 and 86400, found 86401",
                    "p.toml:6:25: `icmp_echo_max_payload` must be between 0 and 65507, found \
                     70000",
                ],
            ),
            (
                "[shield]\nsource_block = 60\nsource_prefix_v4 = 24\n",
                vec![
                    "p.toml:2:16: `source_block` needs `source_rate`: what a prefix goes over",
                    "p.toml:3:20: `source_prefix_v4` needs `source_rate` or `icmp_echo_rate`",
                ],
            ),
            (
                "[shield]\nicmp_echo_rate = \"fast\"\nsource_rates = 1\n",
                vec![
                    "p.toml:2:18: `icmp_echo_rate` must be an integer, found a string",
                    "p.toml:3:1: unknown key `source_rates` in [shield]; expected one of \
                     `syn_ports`, `syn_cookies`, `syn_rate`, `syn_hold`, `mss_v4`, `mss_v6`, \
                     `wscale`, `tcp_invalid`, `amplification`, `amplification_ports`, \
                     `source_rate`, `source_prefix_v4`, `source_prefix_v6`, `source_block`, \
                     `icmp_echo_rate`, `icmp_echo_global_rate`, `icmp_echo_max_payload`",
                ],
            ),
            (
                "[conntrack]\nenabled = false\n[shield]\nicmp_echo_global_rate = 100\n",
                vec![
                    "p.toml:3:1: [shield] needs connection tracking, but [conntrack] turns it \
                     off (`enabled = false` on line 2)",
                ],
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(errors(text), expected, "for:\n{text}");
        }
    }

    #[test]
    fn conntrack_errors_come_with_every_other_error_in_file_order() {
        let text = r#"[firewall]
stateful = true
default = "reject"

[[firewall.rule]]
action = "drop"
state = ["new", "old"]
proto = "tcp"
dport = "x"

[conntrack]
enabled = false
udp = 0
"#;
        assert_eq!(
            errors(text),
            [
                "p.toml:2:12: `stateful = true` needs connection tracking, but [conntrack] turns \
                 it off (`enabled = false` on line 12)",
                "p.toml:3:11: unknown default action `reject`; expected `allow` or `drop`",
                "p.toml:7:9: `state` needs connection tracking, but [conntrack] turns it off \
                 (`enabled = false` on line 12)",
                "p.toml:7:17: unknown state `old`; expected `new`, `established`, `related` or \
                 `invalid`",
                "p.toml:9:9: invalid port `x` in `dport`",
                "p.toml:13:7: `udp` must be between 1 and 2592000 seconds (30 days), found 0",
            ]
        );
    }

    #[test]
    fn overload_set_must_name_a_set_and_have_a_limit_to_fill_it() {
        for (text, want) in [
            (
                "[conntrack]\nmax_per_source = 5\noverload_set = \"nope\"\n\n[sets.other]\n",
                "p.toml:3:16: `overload_set` names no set: declare it under [sets.nope] (it may \
                 have no entries)",
            ),
            (
                "[sets.bad]\n[conntrack]\nenabled = false\nnew_per_source = 9\n\
                 overload_set = \"bad\"\n",
                "p.toml:5:16: `overload_set` needs connection tracking, but [conntrack] turns it \
                 off (`enabled = false` on line 3)",
            ),
            (
                "[sets.bad]\n[conntrack]\noverload_set = \"bad\"\n",
                "p.toml:3:16: `overload_set` is only filled by a per-source limit: set \
                 `max_per_source` or `new_per_source` too",
            ),
            (
                "[sets.bad]\n[conntrack]\nmax_per_source = 1\noverload_set = 7\n",
                "p.toml:4:16: `overload_set` must be a string, found an integer",
            ),
            (
                "[conntrack]\noverload_ttl = 0\n",
                "p.toml:2:16: `overload_ttl` must be between 1 and 86400, found 0",
            ),
            (
                "[conntrack]\noverload_ttl = 86401\n",
                "p.toml:2:16: `overload_ttl` must be between 1 and 86400, found 86401",
            ),
        ] {
            assert_eq!(errors(text), [want], "for:\n{text}");
        }
        // Declared after [conntrack], with no entries, named with or without its `@`.
        for name in ["bad", "@bad"] {
            let text = format!(
                "[conntrack]\nnew_per_source = 3\noverload_set = \"{name}\"\noverload_ttl = 1\n\
                 [sets.good]\nentries = [\"10.0.0.0/8\"]\n[sets.bad]\n"
            );
            let ct = parse(&text).expect("valid").conntrack;
            assert_eq!((ct.overload_set, ct.overload_ttl_s), (Some(1), 1), "{text}");
        }
    }

    #[test]
    fn conntrack_example_in_module_docs_parses() {
        let policy = parse(&doc_example(2)).expect("doc example is valid");
        assert!(policy.firewall.stateful);
        assert!(policy.tracks_connections());
        let states: Vec<Option<u8>> = policy.firewall.rules.iter().map(|r| r.state).collect();
        assert_eq!(states, [Some(STATE_INVALID), Some(STATE_NEW)]);
        let mut timeouts = DEFAULT_TIMEOUTS_S;
        timeouts[T_TCP_ESTABLISHED] = 7200;
        timeouts[T_UDP] = 20;
        assert_eq!(
            policy.conntrack,
            Conntrack {
                max_entries: 524_288,
                timeouts_s: timeouts,
                present: true,
                line: policy.conntrack.line,
                ..Conntrack::default()
            }
        );
    }
}

#!/usr/bin/env bash
# natlab: a small Internet of Linux network namespaces for NAT tests.
#
#   natlab.sh up [--udp-timeout S] LAB KIND...
#                                 build lab LAB with one home per KIND;
#                                 --udp-timeout: the routers forget a UDP
#                                 mapping after S seconds without traffic
#                                 (conntrack; Linux default 30 s, 120 s once
#                                 both sides have sent)
#   natlab.sh down LAB            delete every namespace of LAB
#   natlab.sh exec LAB NS CMD...  run CMD inside namespace NS of LAB
#                                 (NS = pub, r1, h1, r2, h2, ...)
#   natlab.sh counters LAB        traffic counters, one "NS NAME BYTES" a line:
#                                 pub fwd_I_J   UDP pub forwarded from router
#                                               I to router J (offered)
#                                 pub beacon_in_I / beacon_out_I
#                                               UDP between router I and
#                                               the beacon port
#                                 rJ from_I     UDP delivered into home J
#                                               straight from home I
#                                 rJ from_beacon
#                                               UDP delivered into home J
#                                               from the beacon (relay)
#   natlab.sh ls                  list the namespaces of running labs
#
# KIND is the NAT of a home's router:
#   none       no NAT: the home's address is routed publicly
#   stable     masquerade keeping the source port, so the mapping is the
#              same for every destination (endpoint-independent mapping);
#              unsolicited inbound packets are dropped (conntrack filtering)
#   symmetric  masquerade with a random port per new flow (nftables
#              `fully-random`: address-and-port-dependent mapping, i.e. a
#              symmetric NAT); unsolicited inbound packets are dropped
#
# Topology (every namespace is named LAB-<ns>; nothing touches the host's
# namespace, and no namespace has a route to the outside):
#
#   LAB-pub   "the Internet": 198.18.0.1/32 on lo for the rendezvous
#             (registry 198.18.0.1:9000, beacon 198.18.0.1:9001 by
#             convention); interface rI = 198.18.I.1/24 towards router I;
#             forwards between routers and counts what it forwards
#   LAB-rI    home router I: wan = 198.18.I.2/24 (default route via pub),
#             lan = 10.200.I.1/24; does the NAT of KIND on wan
#   LAB-hI    home I: eth0 = 10.200.I.2/24, default route via the router
#
# 198.18.0.0/15 is reserved for benchmarking (RFC 2544) and 10.200.0.0/16
# is private; neither leaves the lab. Needs root (CAP_NET_ADMIN), iproute2
# and nftables. Used by driver-mio/tests/nat_netns.rs; see
# driver-mio/README.md ("NAT lab").
set -euo pipefail

die() {
    echo "natlab: $*" >&2
    exit 1
}

# Writes a sysctl inside namespace $1 (sysctl(8) may be absent).
nsysctl() {
    ip netns exec "$1" sh -c "echo $3 > /proc/sys/$2"
}

up() {
    local lab=$1
    shift
    [ $# -ge 1 ] || die "up: at least one home KIND"
    [ $# -le 50 ] || die "up: at most 50 homes"
    for kind in "$@"; do
        case $kind in
        none | stable | symmetric) ;;
        *) die "unknown KIND '$kind' (none, stable, symmetric)" ;;
        esac
    done
    local pub=$lab-pub
    ip netns add "$pub"
    ip -n "$pub" link set lo up
    ip -n "$pub" addr add 198.18.0.1/32 dev lo
    nsysctl "$pub" net/ipv4/ip_forward 1

    # Counters of the public side: UDP forwarded from router I to router J
    # (direct paths) and UDP to/from the beacon port per router (relay and
    # beacon control traffic).
    local nft i j n=$#
    nft="table inet natlab {"$'\n'
    for ((i = 1; i <= n; i++)); do
        nft+="counter beacon_in_$i { }"$'\n'"counter beacon_out_$i { }"$'\n'
        for ((j = 1; j <= n; j++)); do
            [ "$i" = "$j" ] || nft+="counter fwd_${i}_$j { }"$'\n'
        done
    done
    nft+="chain forward { type filter hook forward priority 0; policy accept;"$'\n'
    for ((i = 1; i <= n; i++)); do
        for ((j = 1; j <= n; j++)); do
            [ "$i" = "$j" ] ||
                nft+="iifname \"r$i\" oifname \"r$j\" meta l4proto udp counter name fwd_${i}_$j"$'\n'
        done
    done
    nft+="}"$'\n'"chain input { type filter hook input priority 0; policy accept;"$'\n'
    for ((i = 1; i <= n; i++)); do
        nft+="iifname \"r$i\" udp dport 9001 counter name beacon_in_$i"$'\n'
    done
    nft+="}"$'\n'"chain output { type filter hook output priority 0; policy accept;"$'\n'
    for ((i = 1; i <= n; i++)); do
        nft+="oifname \"r$i\" udp sport 9001 counter name beacon_out_$i"$'\n'
    done
    nft+="}"$'\n'"}"$'\n'
    echo "$nft" | ip netns exec "$pub" nft -f -

    i=0
    for kind in "$@"; do
        i=$((i + 1))
        local r=$lab-r$i h=$lab-h$i
        ip netns add "$r"
        ip netns add "$h"
        ip -n "$r" link set lo up
        ip -n "$h" link set lo up
        ip -n "$pub" link add "r$i" type veth peer name wan netns "$r"
        ip -n "$r" link add lan type veth peer name eth0 netns "$h"
        ip -n "$pub" addr add "198.18.$i.1/24" dev "r$i"
        ip -n "$r" addr add "198.18.$i.2/24" dev wan
        ip -n "$r" addr add "10.200.$i.1/24" dev lan
        ip -n "$h" addr add "10.200.$i.2/24" dev eth0
        ip -n "$pub" link set "r$i" up
        ip -n "$r" link set wan up
        ip -n "$r" link set lan up
        ip -n "$h" link set eth0 up
        ip -n "$r" route add default via "198.18.$i.1"
        ip -n "$h" route add default via "10.200.$i.1"
        nsysctl "$r" net/ipv4/ip_forward 1
        # What reaches the home (counted after the NAT's filter, so a
        # packet the router drops is not counted): from each other home
        # (its router's address, or its own when it has no NAT) and from
        # the beacon.
        local cnt="table inet natlab {"$'\n'"counter from_beacon { }"$'\n'
        for ((j = 1; j <= n; j++)); do
            [ "$i" = "$j" ] || cnt+="counter from_$j { }"$'\n'
        done
        cnt+="chain forward { type filter hook forward priority 10; policy accept;"$'\n'
        cnt+="iifname \"wan\" oifname \"lan\" ip saddr 198.18.0.1 udp sport 9001 counter name from_beacon"$'\n'
        for ((j = 1; j <= n; j++)); do
            [ "$i" = "$j" ] ||
                cnt+="iifname \"wan\" oifname \"lan\" ip saddr { 198.18.$j.2, 10.200.$j.2 } meta l4proto udp counter name from_$j"$'\n'
        done
        cnt+="}"$'\n'"}"$'\n'
        echo "$cnt" | ip netns exec "$r" nft -f -
        if [ -n "$udp_timeout" ]; then
            nsysctl "$r" net/netfilter/nf_conntrack_udp_timeout "$udp_timeout"
            nsysctl "$r" net/netfilter/nf_conntrack_udp_timeout_stream "$udp_timeout"
        fi
        local masq
        case $kind in
        none)
            # The home's address is public: the Internet routes to it.
            ip -n "$pub" route add "10.200.$i.0/24" via "198.18.$i.2"
            continue
            ;;
        stable) masq="masquerade" ;;
        symmetric) masq="masquerade fully-random" ;;
        esac
        # A home router: NAT on wan; nothing unsolicited comes in (dropped
        # before conntrack confirms it, so it leaves no state behind that
        # could bend a later outbound mapping).
        ip netns exec "$r" nft -f - <<EOF
table ip natlab {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" $masq
    }
    chain input {
        type filter hook input priority 0; policy accept;
        iifname "wan" ct state new drop
    }
    chain forward {
        type filter hook forward priority 0; policy accept;
        iifname "wan" ct state new drop
    }
}
EOF
    done
}

down() {
    local lab=$1 ns
    for ns in $(ip netns list | awk '{print $1}'); do
        case $ns in
        "$lab"-pub | "$lab"-r[0-9]* | "$lab"-h[0-9]*) ip netns del "$ns" ;;
        esac
    done
}

cmd=${1:-}
[ -n "$cmd" ] || die "usage: natlab.sh up|down|exec|counters|ls ..."
shift
case $cmd in
up)
    udp_timeout=
    if [ "${1:-}" = --udp-timeout ]; then
        [[ ${2:-} =~ ^[1-9][0-9]{0,5}$ ]] || die "--udp-timeout needs whole seconds"
        udp_timeout=$2
        shift 2
    fi
    [ $# -ge 2 ] || die "usage: natlab.sh up [--udp-timeout S] LAB KIND..."
    lab=$1
    shift
    [[ $lab =~ ^[A-Za-z0-9_]{1,40}$ ]] || die "LAB must be 1-40 of [A-Za-z0-9_]"
    ip netns list | awk '{print $1}' | grep -qx "$lab-pub" && die "lab $lab exists"
    # A failed build leaves nothing behind.
    trap 'down "$lab"' ERR
    up "$lab" "$@"
    trap - ERR
    ;;
down)
    [ $# -eq 1 ] || die "usage: natlab.sh down LAB"
    down "$1"
    ;;
exec)
    [ $# -ge 3 ] || die "usage: natlab.sh exec LAB NS CMD..."
    lab=$1 ns=$2
    shift 2
    exec ip netns exec "$lab-$ns" "$@"
    ;;
counters)
    [ $# -eq 1 ] || die "usage: natlab.sh counters LAB"
    for ns in $(ip netns list | awk '{print $1}'); do
        case $ns in
        "$1"-pub | "$1"-r[0-9]*) ;;
        *) continue ;;
        esac
        ip netns exec "$ns" nft list counters table inet natlab |
            awk -v ns="${ns#"$1"-}" '$1 == "counter" { name = $2 }
                $1 == "packets" { print ns, name, $4 }'
    done
    ;;
ls)
    ip netns list | awk '{print $1}' | grep -E -- '-(pub|r[0-9]+|h[0-9]+)$' || true
    ;;
*) die "unknown command '$cmd'" ;;
esac

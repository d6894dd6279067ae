// SPDX-License-Identifier: GPL-2.0
/*
 * tortie IPIP in tc-BPF: for kernels without the ipip module (no tunl0).
 *
 * Problem: Calico's IPIP routes are `<block> via <nodeIP> dev tunl0 onlink`. Without the ipip
 * module there is no tunl0, so we create a placeholder device named tunl0 (one end of a veth
 * pair, ARP off) and do the tunnel's work in two tc programs:
 *
 *   ipip_encap  (tc egress on tunl0): the kernel has already routed the pod's packet to tunl0.
 *               That route's gateway is the outer destination (exactly what the ipip module
 *               does for an NBMA tunl0: rt_nexthop() of the skb's route). ipip.o reads it from
 *               the skb's dst (kfuncs, kernel >= 6.2); ipip-compat.o, built without
 *               TORTIE_GW_FROM_DST for older kernels, asks a FIB lookup on the inner
 *               destination instead (also ipip.o's fallback for a dst without an IPv4
 *               gateway, counted as encap_gw_by_lookup). A second lookup finds the uplink for
 *               that node IP. We insert a 20-byte outer IPv4
 *               header (proto 4, src = this node's IP) and bpf_redirect_neigh() to the uplink,
 *               which fills in the L2 header from the neighbour table: with the next hop from
 *               the second lookup when its neighbour is known (no third route lookup: this is
 *               the per-packet fast path), else letting the kernel route the outer header.
 *   ipip_decap  (tc ingress on the uplink): proto-4 packets addressed to this node's IP whose
 *               source is in the allowlist (the known node IPs) lose their outer header and are
 *               redirected to tunl0's *ingress*, so the inner packet arrives on tunl0 as it would
 *               from the module (netfilter `-i tunl0` and rp_filter behave the same). Proto-4
 *               packets from unknown sources are dropped and counted; everything else passes.
 *
 * Invariants: every packet that reaches ipip_encap is either encapsulated or dropped (never
 * passed to the veth peer, which could loop it back into the stack); ipip_decap never drops
 * non-IPIP traffic and passes it on to the hook's next program (attached as a tcx link on
 * 6.6+, else a tc filter: tortie/dataplane/ipip_bpf.py). Configuration (node IP, tunl0 ifindex and MAC) and the allowlist live in
 * maps that user space fills; the programs hold no other state.
 *
 * Hazards: BPF_F_ADJ_ROOM_DECAP_L3_IPV4 needs kernel >= 6.3: we try it first and fall back to a
 * plain shrink (enough for non-GSO packets, e.g. on Debian 12's 6.1). The outer header is not
 * checksum-verified here (ip_rcv would do that for the module); the uplink is a trusted wire.
 * ipip.o reads kernel structs through CO-RE (libbpf relocates the offsets against the running
 * kernel's BTF) and needs the kfuncs bpf_cast_to_kern_ctx and bpf_rdonly_cast (6.2+): where it
 * does not load, tortie/dataplane/ipip_bpf.py loads ipip-compat.o instead.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#ifdef TORTIE_GW_FROM_DST
#include <bpf/bpf_core_read.h>

/* Kernel >= 6.2 kfuncs: read the skb's route (read-only) the way the ipip module does. */
extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

/* CO-RE views of the kernel structs: only the fields we read; libbpf relocates the offsets
 * against the running kernel's BTF (anonymous unions in sk_buff are matched by field name). */
struct sk_buff {
	unsigned long _skb_refdst;
} __attribute__((preserve_access_index));

struct rtable {
	__u8 rt_gw_family;
	__be32 rt_gw4;
} __attribute__((preserve_access_index));

#define SKB_DST_PTRMASK ~1UL /* bit 0 of _skb_refdst is SKB_DST_NOREF */
#endif

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef IP_DF
#define IP_DF 0x4000
#endif
#define IP_MF 0x2000
#define IP_OFFSET 0x1FFF
/* Not in Debian 12's 6.1 uapi headers (added in 6.3); the value is ABI. */
#define TORTIE_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)

/* Keep in sync with tortie/dataplane/ipip_bpf.py (struct layout and counter indices). */
struct ipip_config {
	__be32 node_ip;     /* outer source on encap; required outer destination on decap */
	__u32 tunl_ifindex; /* where decapsulated packets are injected (ingress) */
	__u8 tunl_mac[6];   /* written as the inner frame's destination so tunl0 accepts it */
	__u16 pad;
};

enum {
	ST_ENCAP_OK = 0,
	ST_ENCAP_DROP_NOT_IPV4,
	ST_ENCAP_DROP_NO_ROUTE,
	ST_ENCAP_DROP_ERROR,
	ST_DECAP_OK,
	ST_DECAP_DROP_UNKNOWN_SRC,
	ST_DECAP_DROP_MALFORMED,
	ST_DECAP_PASS_NOT_OURS,
	ST_DECAP_DROP_ERROR,
	/* Of ENCAP_OK: the next hop's neighbour was unresolved, sent the slow way (see below). */
	ST_ENCAP_VIA_ROUTE,
	/* Outer destination from a FIB lookup, not the skb's route (every packet in compat). */
	ST_ENCAP_GW_BY_LOOKUP,
	ST_MAX = 16,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ipip_config);
} ipip_config SEC(".maps");

/* Known node IPs (network order) -> 1. Filled from user space (set_known_nodes). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __be32);
	__type(value, __u32);
} ipip_allow SEC(".maps");

/* Per-CPU packet counters: no atomics on the fast path; user space sums the CPUs. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ST_MAX);
	__type(key, __u32);
	__type(value, __u64);
} ipip_stats SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&ipip_stats, &idx);

	if (v)
		*v += 1;
}

static __always_inline struct ipip_config *config(void)
{
	__u32 zero = 0;
	struct ipip_config *cfg = bpf_map_lookup_elem(&ipip_config, &zero);

	if (!cfg || !cfg->node_ip)
		return 0;
	return cfg;
}

static __always_inline __u16 ipv4_csum(struct iphdr *iph)
{
	__u16 *p = (__u16 *)iph;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(*iph) / 2); i++)
		sum += p[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

SEC("tc")
int ipip_encap(struct __sk_buff *skb)
{
	struct ipip_config *cfg = config();
	struct bpf_fib_lookup fib = {};
	struct iphdr inner, outer = {};
	__be32 outer_dst;
	long rc;

	if (!cfg) {
		count(ST_ENCAP_DROP_ERROR);
		return TC_ACT_SHOT;
	}
	if (skb->protocol != bpf_htons(ETH_P_IP) ||
	    bpf_skb_load_bytes(skb, ETH_HLEN, &inner, sizeof(inner)) < 0 || inner.version != 4) {
		count(ST_ENCAP_DROP_NOT_IPV4);
		return TC_ACT_SHOT;
	}

#ifdef TORTIE_GW_FROM_DST
	/* 1: the route the kernel chose names the remote node as gateway (ip_tunnel_xmit's
	 * rt_nexthop for an NBMA tunnel): read it from the skb's dst, no lookup needed. Every
	 * IPv4 dst is an rtable underneath (an xfrm bundle copies the gateway into its own). */
	{
		struct sk_buff *kskb = bpf_cast_to_kern_ctx(skb);
		unsigned long refdst = kskb->_skb_refdst & SKB_DST_PTRMASK;
		struct rtable *rt;

		if (refdst) {
			rt = bpf_rdonly_cast((void *)refdst, bpf_core_type_id_kernel(struct rtable));
			if (rt->rt_gw_family == AF_INET && rt->rt_gw4) {
				outer_dst = rt->rt_gw4;
				goto have_outer;
			}
		}
	}
#endif
	/* 1: the inner destination's route through tunl0 names the remote node as gateway.
	 * tot_len = 0 leaves the MTU check to the kernel's is_skb_forwardable (GSO-aware). */
	fib.family = AF_INET;
	fib.tos = inner.tos;
	fib.ipv4_src = inner.saddr;
	fib.ipv4_dst = inner.daddr;
	fib.ifindex = skb->ifindex;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if ((rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) ||
	    fib.ifindex != skb->ifindex) {
		count(ST_ENCAP_DROP_NO_ROUTE);
		return TC_ACT_SHOT;
	}
	outer_dst = fib.ipv4_dst;
	count(ST_ENCAP_GW_BY_LOOKUP);
#ifdef TORTIE_GW_FROM_DST
have_outer:
#endif

	/* 2: how this node reaches that node IP: egress device and L3 next hop. */
	__builtin_memset(&fib, 0, sizeof(fib));
	fib.family = AF_INET;
	fib.ipv4_src = cfg->node_ip;
	fib.ipv4_dst = outer_dst;
	fib.ifindex = skb->ifindex;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if ((rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) ||
	    fib.ifindex == skb->ifindex) {
		/* A node IP routed back into tunl0 would loop forever. */
		count(ST_ENCAP_DROP_NO_ROUTE);
		return TC_ACT_SHOT;
	}

	/* FIXED_GSO: tunl0's MTU (uplink - 20) already sized the segments. */
	if (bpf_skb_adjust_room(skb, sizeof(outer), BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4)) {
		count(ST_ENCAP_DROP_ERROR);
		return TC_ACT_SHOT;
	}
	outer.version = 4;
	outer.ihl = 5;
	outer.tos = inner.tos;
	outer.tot_len = bpf_htons(bpf_ntohs(inner.tot_len) + sizeof(outer));
	/* DF always, as the module does with its default pmtudisc: the inner MTU leaves room. */
	outer.frag_off = bpf_htons(IP_DF);
	outer.ttl = inner.ttl;
	outer.protocol = IPPROTO_IPIP;
	outer.saddr = cfg->node_ip;
	outer.daddr = outer_dst;
	outer.check = ipv4_csum(&outer);
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &outer, sizeof(outer), 0)) {
		count(ST_ENCAP_DROP_ERROR);
		return TC_ACT_SHOT;
	}
	count(ST_ENCAP_OK);
	/* Neighbour known (lookup 2 said SUCCESS): hand the kernel the next hop, so it goes
	 * straight to neigh_output() without routing the outer header a third time. The neighbour
	 * state machine still runs (a STALE entry is re-probed as usual); only the route lookup is
	 * saved. Neighbour unknown: no explicit next hop (params = NULL), so the kernel routes the
	 * outer header and sets that route as the skb's dst. With an explicit next hop the skb
	 * keeps the inner route's dst (via tunl0), and a packet *queued* while ARP resolves is
	 * later re-sent through that dst's neighbour: out of the uplink with tunl0's MAC, i.e.
	 * lost. A valid neighbour queues nothing, so the fast path hits that only if the entry
	 * fails in the moment between the lookup and the send: one lost packet, TCP resends. */
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		struct bpf_redir_neigh nh = {
			.nh_family = AF_INET,
			.ipv4_nh = fib.ipv4_dst, /* the L3 next hop: the gateway, or the node itself */
		};

		return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
	}
	count(ST_ENCAP_VIA_ROUTE);
	return bpf_redirect_neigh(fib.ifindex, NULL, 0, 0);
}

SEC("tc")
int ipip_decap(struct __sk_buff *skb)
{
	struct ipip_config *cfg;
	struct iphdr outer, inner;

	/* Fast path: everything that is not IPv4 proto 4 is none of our business. Passed on with
	 * TC_ACT_UNSPEC (tcx: TCX_NEXT), not TC_ACT_OK: OK would end the hook, and the uplink's
	 * other programs (tcx links after ours, or tc filters) would never see the packet. */
	if (skb->protocol != bpf_htons(ETH_P_IP) ||
	    bpf_skb_load_bytes(skb, ETH_HLEN, &outer, sizeof(outer)) < 0 ||
	    outer.protocol != IPPROTO_IPIP)
		return TC_ACT_UNSPEC;
	cfg = config();
	if (!cfg)
		return TC_ACT_UNSPEC;
	if (outer.daddr != cfg->node_ip) {
		count(ST_DECAP_PASS_NOT_OURS);
		return TC_ACT_UNSPEC;
	}
	if (!bpf_map_lookup_elem(&ipip_allow, &outer.saddr)) {
		count(ST_DECAP_DROP_UNKNOWN_SRC);
		return TC_ACT_SHOT;
	}
	if (outer.ihl != 5 || (outer.frag_off & bpf_htons(IP_MF | IP_OFFSET)) ||
	    bpf_skb_load_bytes(skb, ETH_HLEN + sizeof(outer), &inner, sizeof(inner)) < 0 ||
	    inner.version != 4) {
		count(ST_DECAP_DROP_MALFORMED);
		return TC_ACT_SHOT;
	}
	/* FIXED_GSO: otherwise the kernel grows gso_size by the 20 bytes removed, and the
	 * segments of a GSO packet no longer fit the pod's MTU (TCP stalls after slow start). */
	if (bpf_skb_adjust_room(skb, -(__s32)sizeof(outer), BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO | TORTIE_ADJ_ROOM_DECAP_L3_IPV4) &&
	    bpf_skb_adjust_room(skb, -(__s32)sizeof(outer), BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO)) {
		count(ST_DECAP_DROP_ERROR);
		return TC_ACT_SHOT;
	}
	/* eth_type_trans() on tunl0 would mark a frame for the uplink's MAC PACKET_OTHERHOST and
	 * ip_rcv() would drop it. */
	if (bpf_skb_store_bytes(skb, 0, cfg->tunl_mac, ETH_ALEN, 0)) {
		count(ST_DECAP_DROP_ERROR);
		return TC_ACT_SHOT;
	}
	count(ST_DECAP_OK);
	return bpf_redirect(cfg->tunl_ifindex, BPF_F_INGRESS);
}

char LICENSE[] SEC("license") = "GPL";

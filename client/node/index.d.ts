// Types of the eddy-client API (index.js). Messages follow proto/eddy/v1/eddy.proto as
// @grpc/proto-loader loads them here: the .proto's field names, int64/uint64 as decimal
// strings, enums by name.

export type EventTypeName =
  | 'EVENT_TYPE_UNSPECIFIED' | 'EVENT_TYPE_VIEW' | 'EVENT_TYPE_CLICK' | 'EVENT_TYPE_ADD_TO_CART'
  | 'EVENT_TYPE_REMOVE_FROM_CART' | 'EVENT_TYPE_PURCHASE' | 'EVENT_TYPE_SEARCH';
export type EventTypeShort = 'view' | 'click' | 'add_to_cart' | 'remove_from_cart' | 'purchase' | 'search';
export type Exclusion = 'EXCLUSION_DEFAULT' | 'EXCLUSION_INTERACTED' | 'EXCLUSION_PURCHASED';

export interface Event {
  event_id: string;
  user_id: string;
  session_id?: string;
  timestamp_ms: string | number;
  event_type: EventTypeName;
  product_id?: string;
  category?: string;
  brand?: string;
  price?: number;
  search_query?: string;
  metadata?: Record<string, string>;
}

export interface EventFields {
  event_id?: string;
  timestamp_ms?: string | number;
  session_id?: string;
  category?: string;
  brand?: string;
  price?: number;
  search_query?: string;
  metadata?: Record<string, string>;
}

export interface Rejection { index: number; event_id: string; field: string; reason: string; }

export interface IngestResult {
  accepted: number;
  duplicates: number;
  late: number;
  rejected: Rejection[];
  /** Ingest calls made. */
  batches: number;
}

export interface ReadStaleness { from_follower: boolean; lag_records: string; lag_ms: string; }
export interface Recommendation { product_id: string; score: number; reason: string; category: string; }
export interface RecommendResponse {
  items: Recommendation[];
  cold_start: boolean;
  staleness: ReadStaleness | null;
}
export interface Affinity { name: string; score: number; }
export interface RecentItem { product_id: string; category: string; timestamp_ms: string; }
export interface RecentSearch { query: string; timestamp_ms: string; }
export interface UserProfile {
  user_id: string;
  category_affinities: Affinity[];
  brand_affinities: Affinity[];
  price_range: { min: number; max: number; mean: number } | null;
  recent_views: RecentItem[];
  recent_searches: RecentSearch[];
  recent_purchases: RecentItem[];
  cart: RecentItem[];
  last_update_ms: string;
  event_count: string;
}
export interface GetUserProfileResponse { profile: UserProfile; staleness: ReadStaleness | null; }
export interface TypeCounts {
  view: string; click: string; add_to_cart: string; remove_from_cart: string;
  purchase: string; search: string; total: string;
}
export interface ProductStat { product_id: string; category: string; counts: TypeCounts; }
export interface TopProductsResponse {
  products: ProductStat[];
  watermark_ms: string;
  staleness: ReadStaleness | null;
}
export interface WindowCounts {
  window_start_ms: string; window_end_ms: string; counts: TypeCounts; closed: boolean;
}
export interface EventCountsResponse {
  windows: WindowCounts[];
  watermark_ms: string;
  late_events: string;
  staleness: ReadStaleness | null;
}
export interface DeleteUserResponse {
  model_deleted: boolean; windows_deleted: string; log_entries_deleted: string;
}

export interface RetryInfo {
  method: string;
  code: number;
  codeName: string;
  /** The wait before the next attempt. */
  delayMs: number;
  /** 1 for the first retry. */
  attempt: number;
  /** The delay the server named (a tenant over its quota), 0 if none. */
  retryAfterMs: number;
}

export interface ClientOptions {
  /** Deadline of each attempt of each call (default 5000). */
  timeoutMs?: number;
  /** Retries of UNAVAILABLE / RESOURCE_EXHAUSTED per call (default 5). */
  retries?: number;
  /** [first, max] wait between attempts, doubling with jitter (default [100, 5000]). */
  backoffMs?: [number, number];
  /** The most events per Ingest call (default 500). */
  batchSize?: number;
  /** Bearer token, sent as "authorization: Bearer ..." with every call. */
  token?: string;
  /** PEM CA of the node's certificate: TLS on. */
  tlsCa?: string;
  /** PEM client certificate and key (both or neither). */
  tlsCert?: string;
  tlsKey?: string;
  /** The name checked in the node's certificate (default the endpoint's host). */
  tlsServerName?: string;
  onRetry?: (info: RetryInfo) => void;
  /** Extra @grpc/grpc-js channel options. */
  channelOptions?: Record<string, string | number>;
}

export interface CallOptions { timeoutMs?: number; }
export interface RecommendOptions extends CallOptions {
  limit?: number;
  sessionId?: string;
  currentPage?: string;
  currentProduct?: string;
  cart?: string[];
  exclude?: Exclusion;
  allowStale?: boolean;
}
export interface WindowRange extends CallOptions {
  startMs?: number | string;
  endMs?: number | string;
  includeOpen?: boolean;
  allowStale?: boolean;
}
export interface TopProductsOptions extends WindowRange {
  category?: string;
  eventType?: EventTypeShort | EventTypeName;
  limit?: number;
}
export interface EventCountsOptions extends WindowRange { userId?: string; }

export class EddyError extends Error {
  readonly method: string;
  /** The gRPC status code number (status.NOT_FOUND, ...). */
  readonly code: number;
  readonly codeName: string;
  readonly details: string;
  readonly retryAfterMs: number;
  readonly attempts: number;
}

export class Client {
  /** endpoint: "host:port"; default $EDDY_ENDPOINT, else 127.0.0.1:7070. */
  constructor(endpoint?: string, options?: ClientOptions);
  readonly endpoint: string;
  ingest(events: Event[], options?: CallOptions): Promise<IngestResult>;
  add(event: Event): Promise<IngestResult | null>;
  flush(options?: CallOptions): Promise<IngestResult>;
  recommend(userId: string, options?: RecommendOptions): Promise<RecommendResponse>;
  getUserProfile(userId: string, options?: CallOptions & { allowStale?: boolean }): Promise<GetUserProfileResponse>;
  topProducts(options?: TopProductsOptions): Promise<TopProductsResponse>;
  eventCounts(options?: EventCountsOptions): Promise<EventCountsResponse>;
  deleteUser(userId: string, options?: CallOptions): Promise<DeleteUserResponse>;
  close(): Promise<void>;
}

export function event(userId: string, eventType: EventTypeShort | EventTypeName, productId?: string,
                      fields?: EventFields): Event;
export const EVENT_TYPES: Readonly<Record<EventTypeShort, EventTypeName>>;
export const RETRYABLE: ReadonlySet<number>;
export const status: Readonly<Record<string, number | string>>;

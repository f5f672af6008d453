// The API's shapes the console reads (see the API document at /api/v1/openapi.json).

export interface Assistant {
  id: string;
  name: string;
  provider: string;
  model: string;
  instructions: string;
  temperature: number | null;
  version: number;
  created_at: string;
  updated_at: string;
}

export interface WidgetSettings {
  title: string;
  greeting: string;
  placeholder: string;
  theme: "light" | "dark" | "auto";
  position: "bottom-right" | "bottom-left";
  accent_color: string;
  locale: string;
}

export interface Widget {
  id: string;
  name: string;
  assistant_id: string;
  allowed_origins: string[];
  settings: WidgetSettings;
  limits: { messages_per_minute: number };
  enabled: boolean;
  require_identity: boolean;
  retention_days: number | null;
  version: number;
  created_at: string;
  updated_at: string;
  identity_secret?: string;
}

export interface EmbedCode {
  html: string;
  script_url: string;
  widget_id: string;
  versioned_script_url: string;
  integrity: string;
}

export interface Model {
  id: string;
  provider: string;
}

export interface ConversationItem {
  id: string;
  widget_id: string;
  widget_title?: string;
  widget_name?: string;
  created_at: string;
  last_activity_at: string;
  message_count: number;
  status: string;
  preview: string;
  preview_role?: string | null;
  /** Who answers: bot, waiting (a person was asked for), human or closed. */
  state: "bot" | "waiting" | "human" | "closed";
  assignee: { id: string; name: string } | null;
  waiting_since: string | null;
  unread: number;
  /** Where the visitor asked to be answered by mail while away. */
  reply_email?: string | null;
  cursor: string;
}

export interface Message {
  id: string;
  conversation_id: string;
  role: "user" | "assistant" | string;
  text: string;
  status: string;
  error_code: string | null;
  file_ids: string[];
  created_at: string;
  author_name?: string | null;
  cursor?: string;
}

export interface UsageLine {
  day?: string;
  widget_id?: string;
  name?: string;
  replies_completed: number;
  replies_failed: number;
  input_tokens: number;
  output_tokens: number;
  total_tokens: number;
  estimated_cost: number;
  unpriced_tokens: number;
}

export interface Usage {
  from: string;
  to: string;
  group_by: string;
  currency: string;
  data: UsageLine[];
  total: UsageLine;
}

export interface User {
  id: string;
  email: string;
  name: string | null;
  display_name?: string;
  email_verified: boolean;
}

export interface Session {
  id: string;
  created_at: string;
  last_used_at?: string | null;
  expires_at?: string | null;
  ip?: string | null;
  current?: boolean;
}

export interface Member {
  account_id: string;
  email: string;
  name: string | null;
  display_name: string;
  role: "owner" | "admin" | "agent";
  joined_at: string;
}

export interface Invite {
  id: string;
  workspace_id: string;
  email: string;
  role: "owner" | "admin" | "agent";
  invited_by: string;
  created_at: string;
  expires_at: string;
}

export interface KnowledgeDocument {
  id: string;
  filename: string;
  kind: string;
  size: number;
  status: "queued" | "processing" | "ready" | "failed";
  pages: number | null;
  chunks: number | null;
  error: { code: string; message: string } | null;
  openai: { status: string; file_id: string | null; vector_store_id: string | null } | null;
  created_at: string;
}

export interface KnowledgeStore {
  store: "local" | "openai";
  vector_store_id: string | null;
}

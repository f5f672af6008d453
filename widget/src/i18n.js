// Every string the visitor can see, per locale, and the rules for choosing and filling them.
// Error codes from the server are keys here too: a known code gets its own sentence.
import { uploads } from "./config.js";

export const DEFAULT_TITLE = "Chat with us";
export const DEFAULT_PLACEHOLDER = "Type a message…";

export const STRINGS = {
  en: {
    handoff: "Talk to a person", handoff_waiting: "Waiting for a person…",
    handoff_human: "{name} joined the chat", handoff_typing: "{name} is typing…",
    title: DEFAULT_TITLE, placeholder: DEFAULT_PLACEHOLDER, open: "Open chat",
    close: "Close chat", send: "Send", attach: "Attach a file", remove: "Remove",
    input: "Message", retry: "Retry", stop: "Stop", typing: "The assistant is typing",
    reconnecting: "Connection lost. Reconnecting…", stopped: "Not connected.",
    drop: "Drop a file to attach it", uploading: "Uploading", uploaded: "Attached",
    files: "Attachments", interrupted: "The answer was interrupted. Please ask again.",
    wait_upload: "Please wait until your files are uploaded.",
    network: "The chat can't be reached. Check your connection and try again.",
    origin_not_allowed: "This website is not allowed to use this chat. The site's owner can add it to the widget's allowed origins.",
    widget_not_found: "This chat is not available.",
    rate_limited: "You are sending messages too fast. Please wait a moment and try again.",
    provider_rate_limited: "The assistant is busy right now. Please try again in a moment.",
    provider_unavailable: "The assistant can't be reached right now. Please try again later.",
    budget_exhausted: "The assistant can't answer any more right now. Please try again later.",
    provider_error: "The assistant couldn't answer. Please try again.",
    file_too_large: "This file is too large. The limit is {max}.",
    unsupported_file_type: "This type of file isn't accepted. Accepted types: {types}.",
    empty_file: "This file is empty.",
    unsupported_file_for_provider: "The assistant can't read this kind of file.",
    unknown_file: "An attached file is no longer available. Please attach it again.",
    message_too_long: "Your message is too long. Please shorten it.",
    reply_in_progress: "Please wait for the current answer to finish.",
    identity_required: "Please sign in to this website to chat.",
    error: "Something went wrong. Please try again.",
    unread: "{n} new", new_chat: "New conversation", dismiss: "Dismiss", up: "Helpful",
    down: "Not helpful", comment: "Tell us more (optional)", thanks: "Thank you for your feedback.", sources: "Sources",
    waiting: "The assistant is taking longer than usual…",
    retrying: "The assistant is busy. Trying again in {s} s (attempt {n})…",
    prechat: "Before we start, please tell us:", name: "Your name", email: "Your e-mail address",
    start: "Start the chat",
    away_until: "We're away. We'll reply from {when} ({tz}).", away_closed: "We're away right now.",
    away_nobody: "No one is available right now.", away_ask: "Leave your e-mail address and we'll answer by mail.",
    away_saved: "Thank you. We'll answer at {email}.", invalid_email: "Please enter a valid e-mail address.",
  },
  fr: {
    handoff: "Parler à une personne", handoff_waiting: "En attente d’une personne…",
    handoff_human: "{name} a rejoint la discussion", handoff_typing: "{name} écrit…",
    title: "Discutons", placeholder: "Écrivez un message…", open: "Ouvrir la discussion",
    close: "Fermer la discussion", send: "Envoyer", attach: "Joindre un fichier",
    remove: "Retirer", input: "Message", retry: "Réessayer", stop: "Arrêter",
    typing: "L’assistant écrit", reconnecting: "Connexion perdue. Reconnexion…",
    stopped: "Non connecté.", drop: "Déposez un fichier pour le joindre",
    uploading: "Envoi en cours", uploaded: "Joint", files: "Pièces jointes",
    interrupted: "La réponse a été interrompue. Posez la question à nouveau.",
    wait_upload: "Attendez la fin de l’envoi de vos fichiers.",
    network: "La discussion est injoignable. Vérifiez votre connexion et réessayez.",
    origin_not_allowed: "Ce site n’est pas autorisé à utiliser cette discussion. Son propriétaire peut l’ajouter aux origines autorisées du widget.",
    widget_not_found: "Cette discussion n’est pas disponible.",
    rate_limited: "Vous envoyez des messages trop vite. Patientez un instant, puis réessayez.",
    provider_rate_limited: "L’assistant est très sollicité. Réessayez dans un instant.",
    provider_unavailable: "L’assistant est injoignable pour le moment. Réessayez plus tard.",
    budget_exhausted: "L’assistant ne peut plus répondre pour le moment. Réessayez plus tard.",
    provider_error: "L’assistant n’a pas pu répondre. Réessayez.",
    file_too_large: "Ce fichier est trop volumineux. La limite est de {max}.",
    unsupported_file_type: "Ce type de fichier n’est pas accepté. Types acceptés : {types}.",
    empty_file: "Ce fichier est vide.",
    unsupported_file_for_provider: "L’assistant ne peut pas lire ce type de fichier.",
    unknown_file: "Un fichier joint n’est plus disponible. Joignez-le à nouveau.",
    message_too_long: "Votre message est trop long. Raccourcissez-le.",
    reply_in_progress: "Attendez la fin de la réponse en cours.",
    identity_required: "Connectez-vous à ce site pour discuter.",
    error: "Une erreur s’est produite. Réessayez.",
    unread: "{n} nouveau(x)", new_chat: "Nouvelle discussion", dismiss: "Fermer",
    up: "Utile", down: "Pas utile", comment: "Dites-nous en plus (facultatif)",
    thanks: "Merci pour votre avis.", sources: "Sources", waiting: "L’assistant met plus de temps que d’habitude…",
    retrying: "L’assistant est occupé. Nouvel essai dans {s} s (tentative {n})…",
    prechat: "Avant de commencer, dites-nous :", name: "Votre nom", email: "Votre adresse e-mail",
    start: "Commencer la discussion",
    away_until: "Nous sommes absents. Nous répondrons à partir de {when} ({tz}).", away_closed: "Nous sommes absents pour le moment.",
    away_nobody: "Personne n’est disponible pour le moment.", away_ask: "Laissez votre adresse e-mail et nous vous répondrons par e-mail.",
    away_saved: "Merci. Nous répondrons à {email}.", invalid_email: "Saisissez une adresse e-mail valide.",
  },
  ar: {
    handoff: "التحدث إلى شخص", handoff_waiting: "في انتظار شخص…",
    handoff_human: "انضم {name} إلى المحادثة", handoff_typing: "{name} يكتب…",
    title: "تحدث معنا", placeholder: "اكتب رسالة…", open: "افتح المحادثة",
    close: "أغلق المحادثة", send: "إرسال", attach: "إرفاق ملف", remove: "إزالة",
    input: "رسالة", retry: "أعد المحاولة", stop: "إيقاف", typing: "المساعد يكتب",
    reconnecting: "انقطع الاتصال. جارٍ إعادة الاتصال…", stopped: "غير متصل.",
    drop: "أفلت ملفًا لإرفاقه", uploading: "جارٍ الرفع", uploaded: "تم الإرفاق",
    files: "المرفقات", interrupted: "انقطعت الإجابة. يُرجى السؤال مرة أخرى.",
    wait_upload: "يُرجى الانتظار حتى يكتمل رفع ملفاتك.",
    network: "تعذّر الوصول إلى المحادثة. تحقّق من اتصالك وأعد المحاولة.",
    origin_not_allowed: "هذا الموقع غير مسموح له باستخدام هذه المحادثة. يمكن لمالك الموقع إضافته إلى المصادر المسموح بها.",
    widget_not_found: "هذه المحادثة غير متاحة.",
    rate_limited: "أنت ترسل الرسائل بسرعة كبيرة. انتظر قليلًا ثم أعد المحاولة.",
    provider_rate_limited: "المساعد مشغول الآن. يُرجى المحاولة بعد قليل.",
    provider_unavailable: "تعذّر الوصول إلى المساعد الآن. يُرجى المحاولة لاحقًا.",
    budget_exhausted: "لم يعد المساعد يستطيع الرد الآن. يُرجى المحاولة لاحقًا.",
    provider_error: "لم يتمكن المساعد من الإجابة. يُرجى المحاولة مرة أخرى.",
    file_too_large: "هذا الملف كبير جدًا. الحد الأقصى {max}.",
    unsupported_file_type: "هذا النوع من الملفات غير مقبول. الأنواع المقبولة: {types}.",
    empty_file: "هذا الملف فارغ.",
    unsupported_file_for_provider: "لا يستطيع المساعد قراءة هذا النوع من الملفات.",
    unknown_file: "لم يعد أحد الملفات المرفقة متاحًا. يُرجى إرفاقه مرة أخرى.",
    message_too_long: "رسالتك طويلة جدًا. يُرجى اختصارها.",
    reply_in_progress: "يُرجى انتظار انتهاء الإجابة الحالية.",
    identity_required: "يُرجى تسجيل الدخول إلى هذا الموقع للمحادثة.",
    error: "حدث خطأ ما. يُرجى المحاولة مرة أخرى.",
    unread: "{n} جديدة", new_chat: "محادثة جديدة", dismiss: "إغلاق", up: "مفيد",
    down: "غير مفيد", comment: "أخبرنا بالمزيد (اختياري)", thanks: "شكرًا على رأيك.", sources: "المصادر",
    waiting: "يستغرق المساعد وقتًا أطول من المعتاد…",
    retrying: "المساعد مشغول. محاولة جديدة خلال {s} ث (المحاولة {n})…",
    prechat: "قبل أن نبدأ، أخبرنا من فضلك:", name: "اسمك", email: "بريدك الإلكتروني",
    start: "ابدأ المحادثة",
    away_until: "نحن غير متاحين الآن. سنرد ابتداءً من {when} ({tz}).", away_closed: "نحن غير متاحين الآن.",
    away_nobody: "لا أحد متاح الآن.", away_ask: "اترك بريدك الإلكتروني وسنرد عليك بالبريد.",
    away_saved: "شكرًا. سنرد على {email}.", invalid_email: "أدخل عنوان بريد إلكتروني صحيحًا.",
  },
};
const RIGHT_TO_LEFT = { ar: 1, fa: 1, he: 1, ur: 1 };
// Codes that mean the same thing to a visitor.
const ALIASES = {
  payload_too_large: "file_too_large", unsupported_media_type: "unsupported_file_type",
  invalid_identity: "identity_required",
};

export const canonicalCode = (code) => ALIASES[code] || code;
export const isKnownCode = (code) => code in STRINGS.en;

/** The table, `lang` attribute and direction for a locale such as "fr-CA"; unknown ones get English. */
export function pickLocale(locale) {
  const lang = String(locale || "en").toLowerCase().split("-")[0];
  return {
    lang: lang in STRINGS ? lang : "en",
    dir: RIGHT_TO_LEFT[lang] ? "rtl" : "ltr",
    table: STRINGS[lang] || STRINGS.en,
  };
}

/** A string from `table`, else English, else the table's generic error; `{name}` filled from `vars`. */
export function translate(table, key, vars) {
  const text = table[key] || STRINGS.en[key] || table.error;
  return text.replace(/\{(\w+)\}/g, (_, name) => vars?.[name] ?? "");
}

/** The sentence for an error code, naming the upload `limits` it may need and the wait it may ask for. */
export function explainWith(table, code, retryAfter, limits) {
  code = canonicalCode(code);
  const text = code === "file_too_large" || code === "unsupported_file_type"
    ? translate(table, code, { max: formatBytes(limits.max_size), types: limits.allowed_types.join(", ") })
    : translate(table, isKnownCode(code) ? code : "error");
  // Seconds are worth saying for a short wait; a long one (a used-up budget) says "later".
  return text + (retryAfter > 0 && retryAfter < 100 ? " (" + retryAfter + " s)" : "");
}

export function formatBytes(count) {
  return count >= 1048576 ? +(count / 1048576).toFixed(1) + " MB"
    : count >= 1024 ? Math.round(count / 1024) + " KB" : count + " B";
}

// The widget's current language: English until the settings name another.
let current = STRINGS.en;
export const useLocale = (locale) => {
  const picked = pickLocale(locale);
  current = picked.table;
  return picked;
};
export const t = (key, vars) => translate(current, key, vars);
export const explain = (code, retryAfter) => explainWith(current, code, retryAfter, uploads);

"""The closed vocabularies of the synthetic world: countries, industries, channels, plans, names.

Every categorical value a generated table can hold is listed here once, with the
weights it is drawn with, so the generator, the docs and the tests agree. The
lead firmographics that the contract constrains (company size, job seniority)
come from ``crmdata.contract`` instead of being retyped.
"""

from __future__ import annotations

from typing import Final

#: ISO-2 country, draw weight, international calling code (for fake phone numbers).
COUNTRIES: Final[tuple[tuple[str, float, str], ...]] = (
    ("US", 0.30, "1"),
    ("GB", 0.10, "44"),
    ("DE", 0.09, "49"),
    ("FR", 0.07, "33"),
    ("CA", 0.06, "1"),
    ("IN", 0.05, "91"),
    ("AU", 0.04, "61"),
    ("NL", 0.04, "31"),
    ("ES", 0.04, "34"),
    ("IT", 0.04, "39"),
    ("BR", 0.04, "55"),
    ("JP", 0.03, "81"),
    ("SE", 0.03, "46"),
    ("MX", 0.03, "52"),
    ("PL", 0.02, "48"),
    ("SG", 0.02, "65"),
)
COUNTRY_CODES: Final[tuple[str, ...]] = tuple(c for c, _, _ in COUNTRIES)
COUNTRY_WEIGHTS: Final[tuple[float, ...]] = tuple(w for _, w, _ in COUNTRIES)
COUNTRY_PHONE: Final[tuple[str, ...]] = tuple(p for _, _, p in COUNTRIES)

INDUSTRIES: Final[tuple[str, ...]] = (
    "technology",
    "retail",
    "finance",
    "healthcare",
    "manufacturing",
    "education",
    "media",
    "professional_services",
    "logistics",
    "hospitality",
    "public_sector",
    "energy",
)
INDUSTRY_WEIGHTS: Final[tuple[float, ...]] = (
    0.18, 0.12, 0.10, 0.09, 0.10, 0.07, 0.06, 0.10, 0.06, 0.05, 0.04, 0.03,
)

#: Customer segments, in size order. Direct sign-ups draw with these weights;
#: converted leads take the segment of their company size.
SEGMENTS: Final[tuple[str, ...]] = ("consumer", "smb", "mid_market", "enterprise")
SEGMENT_WEIGHTS: Final[tuple[float, ...]] = (0.42, 0.40, 0.13, 0.05)
#: Segment index of each contract company size (1-10 … 5000+).
SEGMENT_OF_COMPANY_SIZE: Final[tuple[int, ...]] = (1, 1, 2, 2, 3, 3)

#: Acquisition channels of direct sign-ups; converted leads come through "sales".
CHANNELS: Final[tuple[str, ...]] = (
    "organic_search",
    "paid_search",
    "referral",
    "social",
    "partner",
    "email",
    "app_marketplace",
    "sales",
)
DIRECT_CHANNEL_WEIGHTS: Final[tuple[float, ...]] = (0.28, 0.22, 0.14, 0.12, 0.09, 0.08, 0.07, 0.0)
SALES_CHANNEL: Final[int] = CHANNELS.index("sales")

#: Subscription plans: name and list price per month.
PLANS: Final[tuple[tuple[str, float], ...]] = (
    ("basic", 19.0),
    ("standard", 49.0),
    ("premium", 99.0),
    ("business", 249.0),
    ("enterprise", 799.0),
)
PLAN_NAMES: Final[tuple[str, ...]] = tuple(p for p, _ in PLANS)
PLAN_PRICES: Final[tuple[float, ...]] = tuple(p for _, p in PLANS)
#: Plan choice per segment (rows: SEGMENTS, columns: PLANS).
PLAN_WEIGHTS_BY_SEGMENT: Final[tuple[tuple[float, ...], ...]] = (
    (0.55, 0.35, 0.10, 0.00, 0.00),
    (0.20, 0.40, 0.30, 0.10, 0.00),
    (0.00, 0.15, 0.40, 0.35, 0.10),
    (0.00, 0.00, 0.15, 0.45, 0.40),
)
#: Negotiated discounts on the list price (monthly_price = list × factor).
PRICE_FACTORS: Final[tuple[float, ...]] = (1.0, 0.9, 0.8, 0.75)
PRICE_FACTOR_WEIGHTS: Final[tuple[float, ...]] = (0.70, 0.15, 0.10, 0.05)
#: Share of each segment that holds a subscription (the rest only buy products).
SUBSCRIBE_SHARE_BY_SEGMENT: Final[tuple[float, ...]] = (0.45, 0.60, 0.75, 0.85)
SUBSCRIBE_SHARE_CONVERTED_LEAD: Final[float] = 0.90

#: The custom attribute on customers (a CRM custom field), in ascending order.
LOYALTY_TIERS: Final[tuple[str, ...]] = ("bronze", "silver", "gold", "platinum")
LOYALTY_SHARES: Final[tuple[float, ...]] = (0.50, 0.30, 0.15, 0.05)

#: Lead sources, in the order of LeadParams.source_effect.
LEAD_SOURCES: Final[tuple[str, ...]] = (
    "referral",
    "partner",
    "event",
    "webinar",
    "organic_search",
    "paid_search",
    "content_syndication",
    "cold_outbound",
    "purchased_list",
)
LEAD_SOURCE_WEIGHTS: Final[tuple[float, ...]] = (0.07, 0.07, 0.08, 0.10, 0.20, 0.18, 0.12, 0.10, 0.08)
#: Lead company size and seniority weights, in the contract's order.
COMPANY_SIZE_WEIGHTS: Final[tuple[float, ...]] = (0.25, 0.27, 0.22, 0.14, 0.08, 0.04)
JOB_SENIORITY_WEIGHTS: Final[tuple[float, ...]] = (0.40, 0.30, 0.16, 0.09, 0.05)
#: Median annual revenue (million USD) per company size, for the leads' custom attribute.
REVENUE_MEDIAN_MUSD: Final[tuple[float, ...]] = (0.4, 3.0, 15.0, 80.0, 400.0, 3000.0)

#: Product categories with the probability that a product of the category is
#: repeatable (consumables are bought again and again; hardware or onboarding once).
CATEGORIES: Final[tuple[tuple[str, float], ...]] = (
    ("consumables", 1.0),
    ("storage", 1.0),
    ("credits", 1.0),
    ("accessories", 0.6),
    ("training", 0.3),
    ("consulting", 0.5),
    ("analytics", 0.2),
    ("security", 0.2),
    ("integrations", 0.0),
    ("hardware", 0.0),
    ("templates", 0.0),
    ("onboarding", 0.0),
)
#: Median product price per category.
CATEGORY_PRICE: Final[tuple[float, ...]] = (15.0, 30.0, 50.0, 40.0, 300.0, 900.0, 120.0, 150.0, 90.0, 600.0, 25.0, 500.0)
PRODUCT_ADJECTIVES: Final[tuple[str, ...]] = (
    "Basic", "Pro", "Plus", "Max", "Lite", "Ultra", "Smart", "Prime", "Flex", "Core", "Nova", "Edge",
)

FIRST_NAMES: Final[tuple[str, ...]] = (
    "Ada", "Alan", "Grace", "Linus", "Maria", "John", "Sofia", "Liam", "Emma", "Noah", "Olivia",
    "Lucas", "Mia", "Ethan", "Amelia", "Mateo", "Aisha", "Yuki", "Chen", "Priya", "Omar", "Elena",
    "Hugo", "Ingrid", "Kofi", "Lena", "Marco", "Nadia", "Oscar", "Paula", "Rafael", "Sara", "Tomas",
    "Uma", "Viktor", "Wei", "Ximena", "Yusuf", "Zoe", "Anna", "Ben", "Clara", "David", "Eva",
    "Felix", "Greta", "Hana", "Ivan", "Julia", "Karim", "Laura", "Mohammed", "Nina", "Pedro",
)
LAST_NAMES: Final[tuple[str, ...]] = (
    "Smith", "Johnson", "Garcia", "Muller", "Rossi", "Dubois", "Silva", "Kim", "Nguyen", "Patel",
    "Tanaka", "Kowalski", "Jansen", "Andersson", "Lopez", "Brown", "Wilson", "Martin", "Schmidt",
    "Bianchi", "Moreau", "Santos", "Lee", "Tran", "Shah", "Sato", "Nowak", "de Vries", "Berg",
    "Hernandez", "Taylor", "Clark", "Fischer", "Romano", "Laurent", "Costa", "Park", "Pham",
    "Singh", "Suzuki", "Wojcik", "Bakker", "Lindqvist", "Ramirez", "Walker", "Young", "Weber",
)
EMAIL_DOMAINS: Final[tuple[str, ...]] = (
    "example.com", "example.org", "example.net", "mail.example", "post.example",
)

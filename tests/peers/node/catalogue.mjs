// SDK-independent data, mirroring ../catalogue.py exactly (same PII, same big_result bytes).

export const CUSTOMER_TEMPLATE = {
  name: 'Jane Doe',
  email: 'jane.doe@example.com',
  phone: '+44 20 7946 0958',
  mobile: '447700900123',
  iban: 'GB82WEST12345698765432',
  portal_api_key: 'sk_live_4eC39HqLyjWDarjtT1zdp7dc',
};
export const README_URI = 'file:///crm/readme.txt';
export const README_TEXT = 'CRM export service.\nQuestions about this data set go to dpo@crm.example.com.\n';
const LINE_BYTES = 64;
const MIB = 1024 * 1024;

export function num(x) {
  return String(x);
}

export function ibanGb(account) {
  const bban = `WEST123456${String(account).padStart(8, '0')}`;
  const digits = [...(bban + 'GB00')].map((c) => parseInt(c, 36).toString()).join('');
  const check = 98 - Number(BigInt(digits) % 97n);
  return `GB${String(check).padStart(2, '0')}${bban}`;
}

export function customer(id) {
  return { id: String(id), ...CUSTOMER_TEMPLATE };
}

export function customerJson(id) {
  return JSON.stringify(customer(id));
}

export function customerText(id) {
  const c = customer(id);
  return `Customer ${c.id}: ${c.name}, email ${c.email}, phone ${c.phone}, IBAN ${c.iban}`;
}

export function exportRecord(i) {
  return {
    id: i,
    name: `Customer ${i}`,
    email: `customer${i}@example.com`,
    phone: `+44 20 7946 ${String(i % 10000).padStart(4, '0')}`,
    iban: ibanGb(98765432 + i),
  };
}

export function exportJsonl(limit) {
  let out = '';
  for (let i = 1; i <= limit; i++) out += JSON.stringify(exportRecord(i)) + '\n';
  return out;
}

export function bigText(mb) {
  const pad = 'x'.repeat(LINE_BYTES - 'line 0000000000 \n'.length);
  const lines = (mb * MIB) / LINE_BYTES;
  const parts = new Array(lines);
  for (let i = 0; i < lines; i++) parts[i] = `line ${String(i).padStart(10, '0')} ${pad}\n`;
  return parts.join('');
}

export function promptText(id) {
  return `Summarize the account history of this customer. ${customerText(id)}`;
}
